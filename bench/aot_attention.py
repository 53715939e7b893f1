"""XLA's temporary bytes of attention compiled for one TPU v5e chip, on a CPU host (libtpu).

  python bench/aot_attention.py [--lengths 2048 8192]

The gradient of sum(attention(q, k, v)) in q, k, v and the bias table, with the T5 bias, segment
ids and causal masking; bf16 [1, L, 8, 64] (XXL's 64 heads over 8 model-parallel chips). The
pallas kernel stops at trace time on TPU (kernels.flash.TPU_UNSUPPORTED); see bench/README.md.
"""

import argparse
import time

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from t5x_lite.model.kernels import reference
from t5x_lite.modes import compile as compile_lib


def main():
  parser = argparse.ArgumentParser(description=__doc__)
  parser.add_argument("--lengths", type=int, nargs="+", default=[2048, 8192])
  parser.add_argument("--topology", default="v5e:2x2")
  args = parser.parse_args()
  devices = compile_lib.get_topology(args.topology)
  mesh = Mesh(np.array(devices[:1]).reshape(1, 1), ("data", "model"))
  replicated = NamedSharding(mesh, P())
  heads, d = 8, 64
  for length in args.lengths:
    sds = lambda shape, dtype: jax.ShapeDtypeStruct(shape, dtype, sharding=replicated)
    q = sds((1, length, heads, d), jnp.bfloat16)
    table, seg = sds((heads, 32), jnp.float32), sds((1, length), jnp.int32)

    def loss(q, k, v, table, seg):
      out = reference.xla_attention(q, k, v, bias_table=table, query_segment_ids=seg,
                                    kv_segment_ids=seg, causal=True, bidirectional=False)
      return jnp.sum(out.astype(jnp.float32))

    for name, fn in (("forward", loss), ("forward+backward", jax.grad(loss, (0, 1, 2, 3)))):
      def compile_fn(fn=fn):
        start = time.perf_counter()
        with jax.set_mesh(mesh):
          compiled = jax.jit(fn).lower(q, q, q, table, seg).compile()
        return compiled, time.perf_counter() - start
      compiled, seconds = compile_lib.compile_or_none(name, compile_fn)
      if compiled is None:
        print(f"xla L={length} {seconds}")
        continue
      temp = compiled.memory_analysis().temp_size_in_bytes
      print(f"xla L={length} {name}: temporaries {temp / 2**20:.0f} MiB "
            f"(compiled in {seconds:.0f} s)")


if __name__ == "__main__":
  main()
