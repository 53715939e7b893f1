"""A model's initial parameters from INITIAL_CHECKPOINT_PATH: orbax, t5x or a HF directory.

What a model takes from the checkpoint is its `initial_checkpoint_params`
(model_interface.Model): None for all of its parameters (the encoder-decoder), or some
top-level entries (the encoder heads: `token_embedder` and `encoder`; the checkpoint's decoder
and head are dropped, the model's other entries keep their fresh initialisation). The path is

  - a t5x_lite checkpoint (MODEL_DIR/checkpoints/<step>, its state, or a checkpoints
    directory: its latest step), restored with its checksums verified
    (restore.restore_params), or
  - a t5x checkpoint (checkpoint_<step>/ with t5x's msgpack `checkpoint` file and TensorStore
    arrays, or t5x's orbax layout checkpoint_<step>/state/; t5x_lite.interop.t5x_checkpoint):
    all of an encoder-decoder's parameters must match the model's T5Config, a head takes the
    encoder's; with restore_optimizer_state, t5x's Adafactor statistics and step come too
    (t5x_train_state), so a t5x run continues, or
  - a local HF transformers T5 directory (config.json + weights): a model that takes only
    the encoder's entries reads any T5 directory's encoder (T5ForConditionalGeneration,
    T5EncoderModel, T5ForTokenClassification: hf_checkpoint.load_hf_encoder); one that takes all
    of an encoder-decoder's reads a T5ForConditionalGeneration (hf_checkpoint.load_hf_checkpoint).

Values are cast to the model's dtypes and put in its shardings; a parameter whose shape
differs is an error naming its path and both shapes.
"""

from typing import Optional

from etils import epath
import jax
import numpy as np
import orbax.checkpoint as ocp

from t5x_lite.checkpointing import restore
from t5x_lite.checkpointing import step_record
from t5x_lite.checkpointing import train_state
from t5x_lite.interop import hf_checkpoint
from t5x_lite.interop import t5x_checkpoint
from t5x_lite.interop import t5x_format
from t5x_lite.interop import t5x_param_layout

# What hf_checkpoint.load_hf_encoder gives: the entries of a T5 encoder.
_HF_ENCODER_PARAMS = ("token_embedder", "encoder")


def is_hf_directory(path: str) -> bool:
  """Whether `path` (local or remote) is a HF transformers model directory."""
  return bool(str(path or "").strip()) and (epath.Path(path) / "config.json").is_file()


def check_path(path: str) -> None:
  """Raises ValueError naming what `path` holds unless it is a checkpoint or a HF directory."""
  if not (is_hf_directory(path) or t5x_format.is_t5x_checkpoint(path)):
    restore.resolve_checkpoint_path(path)


def restores_optimizer_state(model, path: str) -> Optional[str]:
  """None if the optimizer state can come from `path` too, else why not (for the error)."""
  if model.initial_checkpoint_params is not None:
    return (f"{type(model).__name__} starts from the "
            f"{'/'.join(model.initial_checkpoint_params)} parameters of INITIAL_CHECKPOINT_PATH "
            "with a fresh optimizer")
  if is_hf_directory(path):
    return f"{path} is a HF transformers directory, which holds no optimizer state"
  return None


def load(model, path: str, params, vocabulary=None):
  """`params` with the model's `initial_checkpoint_params` read from `path`.

  Args:
    model: a model_interface.Model (its config.scan_layers decides the layout read from HF).
    path: an orbax checkpoint or a local HF T5 directory (module docstring).
    params: the model's (sharded) params; their shapes, dtypes and shardings are the target.
    vocabulary: the run's seqio vocabulary (its targets'): an orbax checkpoint trained with
      another one is refused (step_record.VocabularyMismatchError) when the model takes all
      of its parameters. None: not checked. A model that takes some entries (a head's
      encoder) is not checked: its run's targets vocabulary (labels) is not the checkpoint's.

  Raises:
    ValueError: the checkpoint lacks an entry or a shape differs (each path, both shapes).
  """
  names = model.initial_checkpoint_params
  target = params if names is None else {k: params[k] for k in names}
  if is_hf_directory(path):
    loaded = _read_hf(path, target, model.config.scan_layers)
  elif t5x_format.is_t5x_checkpoint(path):
    loaded = _read_t5x(path, target, model.config, whole=names is None)
  else:
    state_path = restore.resolve_checkpoint_path(path)
    if names is not None:
      _check_entries(state_path, names)
    abstract = jax.tree_util.tree_map(
        lambda t: jax.ShapeDtypeStruct(t.shape, t.dtype, sharding=t.sharding), target)
    # Verified like every restore: a damaged or non-finite array is refused, by name.
    loaded = restore.restore_params(state_path, abstract,
                                    vocabulary if names is None else None,
                                    subset=names is not None)
  return {**params, **loaded}


def _read_hf(path: str, target, scan_layers: bool):
  if set(target) <= set(_HF_ENCODER_PARAMS):
    _, loaded = hf_checkpoint.load_hf_encoder(path, scan_layers=scan_layers)
  else:
    _, loaded = hf_checkpoint.load_hf_checkpoint(path, scan_layers=scan_layers)
  missing = sorted(set(target) - set(loaded))
  if missing:
    raise ValueError(f"The HF directory {path} has no {missing} parameters for this model "
                     "(INITIAL_CHECKPOINT_PATH).")
  return _placed({k: loaded[k] for k in target}, target, path)


def _read_t5x(path: str, target, config, whole: bool):
  # A head's T5Config need not describe the checkpoint's decoder: read its own shapes then.
  if not whole:
    config = t5x_param_layout.config_from_t5x_checkpoint(path, scan_layers=config.scan_layers)
  loaded = t5x_checkpoint.load_t5x_checkpoint(path, config)
  return _placed({k: loaded[k] for k in target}, target, path)


def _placed(loaded, target, path: str):
  """`loaded` (numpy) cast to the target's dtypes and put in its shardings, shapes checked."""
  step_record.check_shapes(loaded, target, path)
  return jax.tree_util.tree_map(
      lambda x, t: jax.device_put(np.asarray(x, t.dtype), t.sharding), loaded, target)


def t5x_train_state(model, path: str, abstract) -> train_state.TrainState:
  """The TrainState of a t5x checkpoint: its parameters, Adafactor statistics and step.

  Args:
    model: a model taking all of the checkpoint's parameters (the encoder-decoder).
    path: a t5x checkpoint_<step> directory.
    abstract: the run's TrainState of ShapeDtypeStructs with shardings (its optimizer must be
      t5x_lite's adafactor() with the standard factoring rules, whose state t5x's maps onto).

  Raises:
    ValueError: the run's optimizer state has another structure, or a shape differs.
  """
  params, opt_state, step = t5x_checkpoint.load_t5x_checkpoint(path, model.config,
                                                               with_optimizer_state=True)
  state = train_state.TrainState(step=np.asarray(step, np.int32), params=params,
                                 opt_state=opt_state)
  if jax.tree_util.tree_structure(state) != jax.tree_util.tree_structure(abstract):
    raise ValueError(
        f"RestoreConfig.restore_optimizer_state=True with the t5x checkpoint {path}: its "
        "Adafactor state maps onto t5x_lite's adafactor() with the standard factoring rules, "
        "and this run's optimizer state has another structure; use adafactor() or set "
        "restore_optimizer_state=False.")
  return _placed(state, abstract, path)


def _check_entries(state_path: str, names) -> None:
  with ocp.PyTreeCheckpointer() as checkpointer:
    metadata = checkpointer.metadata(state_path)
  saved = getattr(metadata, "item_metadata", metadata).tree["params"]
  missing = [k for k in names if k not in saved]
  if missing:
    raise ValueError(f"The checkpoint {state_path} has no {missing} parameters: "
                     "INITIAL_CHECKPOINT_PATH must hold them (a T5 checkpoint for an encoder "
                     "head).")
