"""Decode-step matrix-vector products on XLA:CPU: kernel layout [in, out] vs [out, in].

A stand-in for the 1e8-parameter ladder model's decode (d_model 832, d_ff 3328, 12 layers;
no attention, no KV cache): 16 steps of batch-1 projections inside one jitted ``lax.scan``
with the weights closed over.  Reports ms per step and the weight bytes read per second.

    python benchmarks/decode_matvec_layout.py
"""

import time

import jax
import jax.numpy as jnp
import numpy as np

D, F, L, G = 832, 3328, 12, 16


def timed(f, *args, n=5):
    f = jax.jit(f)
    jax.block_until_ready(f(*args))
    ts = []
    for _ in range(n):
        t0 = time.perf_counter()
        jax.block_until_ready(f(*args))
        ts.append(time.perf_counter() - t0)
    return float(np.median(ts)), float(np.min(ts)), float(np.max(ts))


def main():
    keys = iter(jax.random.split(jax.random.key(0), 4 * L + 1))
    layers = [
        [jax.random.normal(next(keys), s) * 0.02 for s in [(D, 3 * D), (D, D), (D, F), (F, D)]]
        for _ in range(L)
    ]
    x = jax.random.normal(next(keys), (1, D))
    nbytes = sum(w.nbytes for layer in layers for w in layer) * G

    def run(x, ls, out_in):
        mm = (lambda x, w: jnp.einsum("bi,oi->bo", x, w)) if out_in else (lambda x, w: x @ w)

        def step(x, _):
            for qkv, out, up, down in ls:
                x = x + mm(mm(x, qkv)[:, :D], out)
                x = x + mm(jax.nn.gelu(mm(x, up)), down)
            return x, None

        return jax.lax.scan(step, x, None, length=G)[0]

    print(
        f"jax {jax.__version__}, {jax.devices()[0].device_kind}; "
        f"{L} layers, d {D}, d_ff {F}, {G} steps"
    )
    for out_in in (False, True):
        ls = [[w.T for w in layer] for layer in layers] if out_in else layers
        med, lo, hi = timed(lambda x, ls, out_in=out_in: run(x, ls, out_in), x, ls)
        print(
            f"kernel {'[out, in]' if out_in else '[in, out]'}: {med / G * 1e3:.2f} ms/step "
            f"(min {lo / G * 1e3:.2f}, max {hi / G * 1e3:.2f}), "
            f"{nbytes / med / 1e9:.1f} GB/s of weights"
        )


if __name__ == "__main__":
    main()
