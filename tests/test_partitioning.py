"""Sharded training on 8 fake CPU devices: every mesh layout gives the single-device result.

The runs happen in subprocesses (tests/sharded_worker.py) because the fake device count
must be set before jax is imported.
"""

import os
import socket
import subprocess
import sys

import numpy as np
import pytest

from t5x_lite.parallel import partitioning
from t5x_lite.training import memory_planner

WORKER = os.path.join(os.path.dirname(__file__), "sharded_worker.py")
MESHES = ["1x1", "8x1", "4x2+ckpt", "2x4+restore", "1x8", "4x2+fsdp", "1x1+restore",
          "4x2+pallas", "2x2x2"]
# Every layout that trains, compared with the single device.
TRAINED = ["8x1", "4x2+ckpt", "1x8", "4x2+fsdp", "4x2+pallas", "2x2x2"]


def _run(args):
  env = dict(os.environ, PYTHONPATH=os.path.dirname(os.path.dirname(__file__)))
  return subprocess.Popen([sys.executable, WORKER, *args], env=env, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True)


def _wait(proc, timeout=1800):  # a guard against hangs; the 9-mesh run takes minutes
  out, _ = proc.communicate(timeout=timeout)
  assert proc.returncode == 0, out[-4000:]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
  out = tmp_path_factory.mktemp("sharded")
  _wait(_run([str(out), ",".join(MESHES)]))
  return {m: dict(np.load(out / f"{m}.npz")) for m in MESHES}


def _params(result):
  return {k: v for k, v in result.items() if k.startswith("param:")}


@pytest.mark.parametrize("mesh", TRAINED)
def test_losses_and_params_equal_single_device(runs, mesh):
  reference = runs["1x1"]
  np.testing.assert_allclose(runs[mesh]["losses"], reference["losses"], rtol=1e-5)
  for key, value in _params(reference).items():
    np.testing.assert_allclose(runs[mesh][key], value, atol=1e-5, err_msg=key)


@pytest.mark.parametrize("mesh", TRAINED)
def test_beam_search_gives_the_same_tokens_on_every_mesh(runs, mesh):
  np.testing.assert_array_equal(runs[mesh]["decoded"], runs["1x1"]["decoded"])
  assert runs["1x1"]["decoded"].shape == (8, 2, 6)


def test_three_axis_mesh_splits_the_batch_over_replica_and_data(runs):
  """On (replica 2, data 2, model 2) the batch is split 4 ways and parameters are sharded
  over 'model' only (replicated over 'replica' and 'data'), as on the (4, 2) mesh."""
  assert runs["2x2x2"]["batch_spec"] == "P(('replica', 'data'),)"
  assert runs["4x2+ckpt"]["batch_spec"] == "P('data',)"
  specs = {k: v for k, v in runs["2x2x2"].items() if k.startswith("spec:")}
  assert specs and all(specs[k] == runs["4x2+ckpt"][k] for k in specs)


@pytest.mark.parametrize("mesh", ["2x4+restore", "1x1+restore"])
def test_checkpoint_from_4x2_restores_on_other_meshes(runs, mesh):
  for key, value in _params(runs["4x2+ckpt"]).items():
    np.testing.assert_array_equal(runs[mesh][key], value, err_msg=key)


def test_params_and_optimizer_state_are_sharded_by_the_rules(runs):
  tp = runs["4x2+ckpt"]
  assert tp["spec:encoder/layers_0/mlp/wi_0/kernel"] == "(None, 'model')"
  assert tp["spec:encoder/layers_0/mlp/wo/kernel"] == "('model', None)"
  assert tp["spec:encoder/layers_0/attention/query/kernel"] == "(None, 'model', None)"
  assert tp["spec:decoder/logits_dense/kernel"] == "(None, 'model')"
  assert tp["spec:token_embedder/embedding"] == "('model', None)"
  fsdp = runs["4x2+fsdp"]
  assert fsdp["spec:encoder/layers_0/mlp/wi_0/kernel"] == "('data', 'model')"
  assert fsdp["spec:encoder/layers_0/attention/out/kernel"] == "('model', None, 'data')"
  # Adafactor's factored statistics of wi_0 [128, 256]: v_row [128] keeps the 'embed'
  # sharding, v_col [256] keeps the 'mlp' sharding.
  wi_0 = "param_states/encoder/layers_0/mlp/wi_0/kernel"
  assert list(fsdp[f"optshape:{wi_0}/v_row"]) == [128]
  assert fsdp[f"optspec:{wi_0}/v_row"] == "('data',)"
  assert fsdp[f"optspec:{wi_0}/v_col"] == "('model',)"
  # The attention kernel [embed 128, heads 8, kv 16] is factored too: v_row [embed],
  # v_col [heads, kv] sharded over 'model'.
  query = "param_states/encoder/layers_0/attention/query/kernel"
  assert list(fsdp[f"optshape:{query}/v_row"]) == [128]
  assert list(fsdp[f"optshape:{query}/v_col"]) == [8, 16]
  assert fsdp[f"optspec:{query}/v_row"] == "('data',)"
  assert fsdp[f"optspec:{query}/v_col"] == "('model', None)"
  # Unfactored second moments are shaped and sharded like their parameter.
  assert fsdp["optspec:param_states/encoder/layers_0/pre_mlp_layer_norm/scale/v"] == "('data',)"


@pytest.mark.parametrize("mesh", ["1x1", "8x1", "4x2+ckpt", "1x8", "4x2+fsdp"])
def test_memory_planner_matches_the_bytes_each_device_holds(runs, mesh):
  import sharded_worker  # pylint: disable=g-import-not-at-top  (tests/ is on sys.path)
  data, model = (int(x) for x in mesh.split("+")[0].split("x"))
  plan = memory_planner.plan(sharded_worker.config(), {"data": data, "model": model},
                             batch_size=8, inputs_length=16, targets_length=12,
                             fsdp="fsdp" in mesh)
  assert plan.params == int(runs[mesh]["param_bytes"])
  assert plan.optimizer_state == int(runs[mesh]["opt_bytes"])


def _free_port():
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def test_two_processes_train_like_one_process_with_eight_devices(runs, tmp_path):
  port = _free_port()
  procs = [_run([str(tmp_path), "4x2", str(i), "2", str(port)]) for i in range(2)]
  for proc in procs:
    _wait(proc)
  result = dict(np.load(tmp_path / "4x2.npz"))
  np.testing.assert_allclose(result["losses"], runs["4x2+ckpt"]["losses"], rtol=1e-5)
  np.testing.assert_array_equal(result["decoded"], runs["4x2+ckpt"]["decoded"])
  for key, value in _params(runs["4x2+ckpt"]).items():
    np.testing.assert_allclose(result[key], value, atol=1e-5, err_msg=key)


def test_two_processes_eval_infer_and_export_like_one_process(tmp_path):
  """eval metrics and predictions, infer's JSONL rows and the exported HF weights of one
  checkpoint: two processes on a (4, 2) mesh (data split across them) give one process's."""
  import safetensors.numpy  # pylint: disable=g-import-not-at-top
  import runmode_utils as u  # pylint: disable=g-import-not-at-top
  import sharded_worker  # pylint: disable=g-import-not-at-top
  sharded_worker.save_initial_checkpoint(str(tmp_path))
  port = _free_port()
  procs = [_run([str(tmp_path), "4x2+runmodes", str(i), "2", str(port)]) for i in range(2)]
  sharded_worker.run_modes(str(tmp_path), "1x1+runmodes")  # One process, one device.
  for proc in procs:
    _wait(proc)
  one, two = tmp_path / "1x1+runmodes", tmp_path / "4x2+runmodes"

  metrics = [u.read_jsonl(d / "eval" / "eval_validation_metrics.jsonl") for d in (one, two)]
  assert len(metrics[0]) == 1 and metrics[0][0]["step"] == 0
  assert metrics[1] == [pytest.approx(metrics[0][0], abs=1e-5)]
  assert f"{u.TASK}/mean_log_likelihood" in metrics[0][0]
  predictions = [u.read_jsonl(d / "eval" / "eval_validation_predictions" / "0.jsonl")
                 for d in (one, two)]
  assert len(predictions[0]) == u.NUM_VALIDATION and predictions[1] == predictions[0]

  rows = [u.read_jsonl(d / "infer" / "predictions-00000-of-00001.jsonl") for d in (one, two)]
  assert [r["index"] for r in rows[0]] == list(range(u.NUM_VALIDATION))
  assert [r["prediction"] for r in rows[0]] == [r["prediction"] for r in predictions[0]]
  assert len({r["prediction"] for r in rows[0]}) > 1  # random weights: varied predictions
  drop_score = lambda r: {k: v for k, v in r.items() if k != "score"}
  assert [drop_score(r) for r in rows[1]] == [drop_score(r) for r in rows[0]]
  np.testing.assert_allclose([r["score"] for r in rows[1]], [r["score"] for r in rows[0]],
                             rtol=1e-5)

  weights = [safetensors.numpy.load_file(str(d / "export" / "model.safetensors"))
             for d in (one, two)]
  assert sorted(weights[1]) == sorted(weights[0])
  for name, value in weights[0].items():
    np.testing.assert_array_equal(weights[1][name], value, err_msg=name)
  config = lambda d: (d / "export" / "config.json").read_text()
  assert config(two) == config(one)


def test_partitioner_errors_name_the_setting():
  with pytest.raises(ValueError, match="num_partitions=3"):
    partitioning.Partitioner(num_partitions=3, devices=[object()] * 4)
  rules = dict(partitioning.standard_logical_axis_rules(fsdp=True))
  assert rules["embed"] == "data" and rules["heads"] == "model"
