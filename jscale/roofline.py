"""The machine's measured roofline: dense matmul FLOP/s (fp32, bf16, int8) and memory bandwidth.

Both are measured with jitted XLA programs on the default device (so they are what XLA can
reach, not a datasheet number), timed after a warm-up, median of ``repeats`` runs, and
cached on disk per device (``$JSCALE_CACHE_DIR/roofline.json``) so they are measured once.
"""

from __future__ import annotations

import json
import os
import platform
import time

import jax
import jax.numpy as jnp
import numpy as np

from jscale.data import cache_dir


def _time(fn, *args, repeats: int) -> np.ndarray:
    jax.block_until_ready(fn(*args))  # compile + warm-up
    out = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        jax.block_until_ready(fn(*args))
        out.append(time.perf_counter() - t0)
    return np.array(out)


def measure_matmul_flops(n: int = 2048, repeats: int = 10, dtype: str = "fp32") -> dict[str, float]:
    """Dense ``[n, n] @ [n, n]`` throughput in ``dtype``: median, min and max FLOP/s (2 n^3 per
    matmul; an int8 "FLOP" is a multiply-add of int8 x int8 -> int32 counted as 2).
    fp32: float32 operands; bf16: bfloat16 operands, fp32 accumulation; int8: int8 operands,
    int32 accumulation (``preferred_element_type``), as the precision policies run them."""
    kinds = {"fp32": (jnp.float32, None), "bf16": (jnp.bfloat16, jnp.float32), "int8": (jnp.int8, jnp.int32)}
    dt, acc = kinds[dtype]
    a = jax.random.randint(jax.random.key(0), (n, n), -100, 100).astype(dt)
    b = jax.random.randint(jax.random.key(1), (n, n), -100, 100).astype(dt)
    t = _time(jax.jit(lambda a, b: jnp.matmul(a, b, preferred_element_type=acc)), a, b, repeats=repeats)
    flops = 2 * n ** 3 / t
    key = "matmul_flops_per_s" if dtype == "fp32" else f"matmul_{dtype}_flops_per_s"
    return {key: float(np.median(flops)), f"{key}_min": float(flops.min()), f"{key}_max": float(flops.max()),
            "matmul_n": n}


def measure_bandwidth(mib: int = 512, repeats: int = 10) -> dict[str, float]:
    """Memory bandwidth of a jitted, buffer-donating ``x <- 2 x`` over a ``mib`` MiB float32
    array (reads + writes 2 x mib MiB per call); median, min and max bytes/s.  Donation makes
    XLA write in place: without it every call page-faults a fresh output buffer and reports
    about a fifth of the real bandwidth on Linux CPUs."""
    x = jnp.ones((mib * 2 ** 20 // 4,), jnp.float32)
    nbytes = 2 * x.nbytes
    scale = jax.jit(lambda x: x * 2.0, donate_argnums=0)
    x = jax.block_until_ready(scale(x))  # compile + warm-up
    t = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        x = jax.block_until_ready(scale(x))
        t.append(time.perf_counter() - t0)
    bw = nbytes / np.array(t)
    return {"bandwidth_bytes_per_s": float(np.median(bw)), "bandwidth_bytes_per_s_min": float(bw.min()),
            "bandwidth_bytes_per_s_max": float(bw.max()), "bandwidth_mib": mib}


def device_info() -> dict[str, str]:
    d = jax.devices()[0]
    return {"device_platform": d.platform, "device_kind": d.device_kind, "device_count": str(jax.device_count()),
            "cpu": platform.processor() or platform.machine(), "host_cpus": str(os.cpu_count()),
            "jax_version": jax.__version__}


def roofline(refresh: bool = False) -> dict:
    """The measured roofline of the default device, cached on disk by device kind."""
    info = device_info()
    key = (f"v2|{info['device_platform']}|{info['device_kind']}|{info['device_count']}|{info['host_cpus']}|"
           f"{info['jax_version']}")
    path = cache_dir() / "roofline.json"
    cached = json.loads(path.read_text()) if path.exists() else {}
    if refresh or key not in cached:
        cached[key] = {**info, **measure_matmul_flops(), **measure_matmul_flops(dtype="bf16"),
                       **measure_matmul_flops(dtype="int8"), **measure_bandwidth(),
                       "measured_at": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(cached, indent=1))
        os.replace(tmp, path)
    return cached[key]
