"""One of two processes agreeing through t5x_lite/runtime/agreement.py, for
tests/test_agreement.py (run as a script).

Usage:
  python tests/agreement_worker.py OUT_DIR PROCESS_ID PORT

Writes OUT_DIR/process_<PROCESS_ID>.json: what each agreement returned or raised here.
"""

import json
import os
import sys


def main():
  out_dir, process_id, port = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
  import jax  # pylint: disable=g-import-not-at-top
  jax.config.update("jax_cpu_collectives_implementation", "gloo")
  jax.distributed.initialize(coordinator_address=f"127.0.0.1:{port}", num_processes=2,
                             process_id=process_id)
  from t5x_lite.runtime import agreement  # pylint: disable=g-import-not-at-top
  seen = {"result": agreement.all_succeed(lambda: 10 * process_id, "Adding")}

  def fail_on_one():
    if process_id == 1:
      raise ValueError("the disk of process 1 is full")
    return "written"

  try:
    agreement.all_succeed(fail_on_one, "Writing step 3", error=KeyError)
  except (ValueError, KeyError) as e:
    seen["raised"] = [type(e).__name__, e.args[0]]
  seen["same"] = agreement.same_on_all([7 + process_id, process_id == 0])
  agreement.barrier("agreement_worker_done")
  with open(os.path.join(out_dir, f"process_{process_id}.json"), "w") as f:
    json.dump(seen, f)


if __name__ == "__main__":
  main()
