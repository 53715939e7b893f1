"""The contract between a model and the run modes, the trainer and checkpoints: `Model`.

The run modes (train, eval, infer, score, export), the Trainer, the evaluators and
checkpoint restore use a model only through the members below; none of them asks which kind
of model it holds. EncoderDecoderModel (t5x_lite/model/encoder_decoder.py) and the encoder heads
(t5x_lite/model/heads.py) implement it; a new model kind does too, and then runs in every mode
with no change elsewhere (tests/test_model_interface.py defines one in the test file).
t5x's `BaseModel` (t5x/models.py) is the anchor: loss, predict, score, feature converter.

Batches are dicts of arrays that the model's own `feature_converter` makes ([B, ...], the
same keys in training, evaluation and inference). The trainer may add `row_ids` (int32 [B],
each row's index in the global batch) when it splits a batch into microbatches: a model
with dropout draws each row's masks from (rng, row id); others ignore it.
"""

from typing import Any, Mapping, Optional, Protocol, runtime_checkable

# The summed metrics every loss_fn returns (the trainer accumulates them over microbatches).
LOSS_METRICS = ("loss_sum", "z_loss_sum", "correct", "num_tokens")


@runtime_checkable
class Model(Protocol):
  """What every model gives the run modes.

  Attributes:
    config: the network's settings (a T5Config); `config.vocab_size` is the embedding size
      that each task's token vocabulary is checked against.
    token_features: the task features read as tokens of the embedding (("inputs",
      "targets") for the encoder-decoder; ("inputs",) for heads, whose targets are labels).
    decoding: the DecodingSettings of predict_batch, or None for a model that samples
      nothing (its `seed` seeds each example's sampling key).
    uses_dropout: whether a training step needs a dropout RNG.
    can_pack: whether `feature_converter(pack=True)` works; a model that cannot pack is
      trained unpacked (the run mode logs it) instead of failing.
    initial_checkpoint_params: the top-level parameter entries taken from
      INITIAL_CHECKPOINT_PATH (t5x_lite.interop.initial_params); None: all of them (and the
      optimizer state may come too). The entries not named keep their fresh initialisation.
    hf_export_format: the HF transformers class the export run mode writes
      ("T5ForConditionalGeneration", "T5ForTokenClassification"), or None where HF has none.
    examples_heading: the line above the example predictions a training run prints.
  """
  config: Any
  token_features: tuple
  decoding: Any
  uses_dropout: bool
  can_pack: bool
  initial_checkpoint_params: Optional[tuple]
  hf_export_format: Optional[str]
  examples_heading: str

  def feature_converter(self, pack: bool):
    """The seqio.FeatureConverter that makes this model's batches from task features."""

  def dummy_input_shapes(self) -> Mapping[str, tuple]:
    """{batch feature: shape} of a tiny batch for `init`: parameter shapes come from it."""

  def init(self, rng, input_shapes: Mapping[str, tuple]):
    """Boxed (nn.LogicallyPartitioned) params from batch shapes {feature: (B, L)}."""

  def loss_weights(self, batch):
    """float32 weights of the label slots of a batch ([B] or [B, L]); 0 on padding."""

  def normalizer(self, num_labelled):
    """What the summed loss is divided by, given the batch's summed loss_weights."""

  def loss_fn(self, params, batch, dropout_rng=None, normalizer=None):
    """(normalised loss, {LOSS_METRICS: float32 sums}) of one (micro)batch.

    Args:
      params: unboxed params.
      batch: a batch (+ row_ids when microbatching).
      dropout_rng: dropout on when given.
      normalizer: divide the summed loss by this (the whole batch's when microbatching);
        None: `normalizer(sum of this batch's loss_weights)`.
    """

  def score_batch(self, params, batch):
    """float32 [B]: each example's log-likelihood of its targets (labels, tags, span)."""

  def predict_batch_with_aux(self, params, batch, rng=None):
    """(int32 [B, L] predicted ids, decoded by the task's targets vocabulary, {"scores": [B]}).

    rng: a PRNG key, or one key per row (uint32 [B, 2]) so that a row's sample depends only
    on its own key; models that sample nothing ignore it.
    """

  def predict_batch(self, params, batch, rng=None):
    """The predicted ids of predict_batch_with_aux."""


def missing_members(model) -> list:
  """The members of `Model` that `model` lacks (empty when it implements the contract)."""
  names = [n for n in Model.__annotations__] + [
      n for n in vars(Model) if not n.startswith("_") and callable(vars(Model)[n])]
  return [n for n in names if not hasattr(model, n)]
