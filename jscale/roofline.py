"""The machine's measured roofline: dense matmul FLOP/s (fp32, bf16, int8) and memory bandwidth.

All are measured on the default device (so they are what the machine reaches, not a datasheet
number), timed after a warm-up, median of ``repeats`` runs, and cached on disk per device
(``$JSCALE_CACHE_DIR/roofline.json``) so they are measured once.

Two bandwidths, because reading and writing are not the same stream:

* ``read_bandwidth_bytes_per_s``: a read-only stream (the best of several reductions, see
  ``measure_read_bandwidth``).  Inference reads its weights and KV cache and writes almost
  nothing, so this is the rate the latency bounds use (``jscale.latency``).
* ``bandwidth_bytes_per_s``: an in-place ``x <- 2 x``, reads + writes.  On the 2-vCPU machine of
  record it is 1.25-1.5x the read-only rate (each core's outstanding line fills cap its reads; the
  write-backs come on top), so no read-only kernel can reach it.  Reported for comparison.
"""

from __future__ import annotations

import json
import os
import platform
import time

import jax
import jax.numpy as jnp
import numpy as np

from jscale.runtime import cache_dir


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
    fp32: float32 operands at ``Precision.HIGHEST`` (true fp32 on GPU/TPU too, as the model
    runs it; no TF32); bf16: bfloat16 operands, fp32 accumulation; int8: int8 operands,
    int32 accumulation (``preferred_element_type``), as the precision policies run them."""
    kinds = {
        "fp32": (jnp.float32, None),
        "bf16": (jnp.bfloat16, jnp.float32),
        "int8": (jnp.int8, jnp.int32),
    }
    dt, acc = kinds[dtype]
    a = jax.random.randint(jax.random.key(0), (n, n), -100, 100).astype(dt)
    b = jax.random.randint(jax.random.key(1), (n, n), -100, 100).astype(dt)
    prec = jax.lax.Precision.HIGHEST if dtype == "fp32" else None
    t = _time(
        jax.jit(lambda a, b: jnp.matmul(a, b, precision=prec, preferred_element_type=acc)),
        a,
        b,
        repeats=repeats,
    )
    flops = 2 * n**3 / t
    key = "matmul_flops_per_s" if dtype == "fp32" else f"matmul_{dtype}_flops_per_s"
    return {
        key: float(np.median(flops)),
        f"{key}_min": float(flops.min()),
        f"{key}_max": float(flops.max()),
        "matmul_n": n,
    }


def measure_bandwidth(mib: int = 512, repeats: int = 10) -> dict[str, float]:
    """Memory bandwidth of a jitted, buffer-donating ``x <- 2 x`` over a ``mib`` MiB float32
    array (reads + writes 2 x mib MiB per call); median, min and max bytes/s.  Donation makes
    XLA write in place: without it every call page-faults a fresh output buffer and reports
    about a fifth of the real bandwidth on Linux CPUs."""
    x = jnp.ones((mib * 2**20 // 4,), jnp.float32)
    nbytes = 2 * x.nbytes
    scale = jax.jit(lambda x: x * 2.0, donate_argnums=0)
    x = jax.block_until_ready(scale(x))  # compile + warm-up
    t = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        x = jax.block_until_ready(scale(x))
        t.append(time.perf_counter() - t0)
    bw = nbytes / np.array(t)
    return {
        "bandwidth_bytes_per_s": float(np.median(bw)),
        "bandwidth_bytes_per_s_min": float(bw.min()),
        "bandwidth_bytes_per_s_max": float(bw.max()),
        "bandwidth_mib": mib,
    }


def measure_read_bandwidth(mib: int = 512, repeats: int = 10) -> dict[str, float]:
    """Read-only memory bandwidth over a ``mib`` MiB float32 array: the best (by median) of
    jitted XLA reductions (the full sum, and row sums of ``[rows, 1024]``) and, on a CPU
    device, numpy's BLAS dot of the array with itself, one chunk per host thread (outside XLA,
    so the bound is not set by XLA's own reduction kernel).  Bytes counted: the array, read
    once.  Returns median, min and max bytes/s of the best method, and its name."""
    x = jnp.ones((mib * 2**20 // 4,), jnp.float32)
    x2 = x.reshape(-1, 1024)
    results = {
        "xla_sum": _time(jax.jit(jnp.sum), x, repeats=repeats),
        "xla_row_sum": _time(jax.jit(lambda a: a.sum(axis=1)), x2, repeats=repeats),
    }
    if jax.devices()[0].platform == "cpu":
        from concurrent.futures import ThreadPoolExecutor

        host = np.ones(x.size, np.float32)
        chunks = np.array_split(host, os.cpu_count() or 1)
        with ThreadPoolExecutor(len(chunks)) as pool:
            results["numpy_threaded_dot"] = _time(
                lambda: list(pool.map(lambda c: np.dot(c, c), chunks)), repeats=repeats
            )
    name = min(results, key=lambda k: np.median(results[k]))
    bw = x.nbytes / results[name]
    return {
        "read_bandwidth_bytes_per_s": float(np.median(bw)),
        "read_bandwidth_bytes_per_s_min": float(bw.min()),
        "read_bandwidth_bytes_per_s_max": float(bw.max()),
        "read_bandwidth_method": name,
    }


def measure_cache_bytes(max_mib: int = 256, per_size_mib: int = 256) -> dict[str, float]:
    """The effective cache of this process's cores, measured: read bandwidth (numpy's dot of a
    float32 array with itself, one chunk per host thread, each chunk read repeatedly) over
    working sets of 0.25 .. ``max_mib`` MiB, doubling; ``cache_bytes`` is the largest working
    set read at >= 1.5x the bandwidth of the largest one (which streams from DRAM), 0 when none
    is. Measured rather than read from the OS: in a VM, sysfs reports the whole socket's L3
    (hundreds of MiB) while the cores get their own slice of it. CPU only (NaN elsewhere)."""
    if jax.devices()[0].platform != "cpu":
        return {"cache_bytes": float("nan")}
    from concurrent.futures import ThreadPoolExecutor

    threads = os.cpu_count() or 1
    sizes = 2.0 ** np.arange(-2, int(np.log2(max_mib)) + 1)  # MiB
    bws = []
    with ThreadPoolExecutor(threads) as pool:
        for mib in sizes:
            n = int(mib * 2**20 / 4)
            chunks = np.array_split(np.ones(n, np.float32), threads)
            reps = max(2, int(per_size_mib / mib))

            def read(c, reps=reps):
                for _ in range(reps):
                    np.dot(c, c)

            list(pool.map(read, chunks))  # warm: pages touched, cache filled
            t = []
            for _ in range(3):
                t0 = time.perf_counter()
                list(pool.map(read, chunks))
                t.append(time.perf_counter() - t0)
            bws.append(n * 4 * reps / np.median(t))
    bws = np.array(bws)
    fast = np.where(bws >= 1.5 * bws[-1])[0]
    return {
        "cache_bytes": float(sizes[fast.max()] * 2**20) if len(fast) else 0.0,
        "cache_curve_mib": [float(v) for v in sizes],
        "cache_curve_bytes_per_s": [float(v) for v in bws],
    }


def device_info() -> dict:
    """Where this process runs: the default device's platform and kind, the device count, the
    host CPU and its logical cores, and the JAX version (the provenance columns of a record)."""
    d = jax.devices()[0]
    return {
        "device_platform": d.platform,
        "device_kind": d.device_kind,
        "device_count": jax.device_count(),
        "cpu": platform.processor() or platform.machine(),
        "host_cpus": os.cpu_count(),
        "jax_version": jax.__version__,
    }


def roofline(refresh: bool = False) -> dict:
    """The measured roofline of the default device, cached on disk by device kind.  Sizes:
    2048^3 matmuls and 512 MiB streams on a CPU; 8192^3 and 2 GiB on an accelerator, where
    smaller problems finish in microseconds and measure dispatch, not the hardware."""
    info = device_info()
    n, mib = (2048, 512) if info["device_platform"] == "cpu" else (8192, 2048)
    key, cached = _key(info), _cached()
    if refresh or key not in cached:
        cached[key] = {
            **info,
            **measure_matmul_flops(n),
            **measure_matmul_flops(n, dtype="bf16"),
            **measure_matmul_flops(n, dtype="int8"),
            **measure_bandwidth(mib),
            **measure_read_bandwidth(mib),
            **measure_cache_bytes(),
            "measured_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        }
        _write(cached)
    if "cache_bytes" not in cached[key]:  # measured since: added to an older cache entry
        cached[key] |= measure_cache_bytes()
        _write(cached)
    return cached[key]


STORED_RATES = (
    "matmul_flops_per_s",
    "matmul_bf16_flops_per_s",
    "matmul_int8_flops_per_s",
    "bandwidth_bytes_per_s",
    "read_bandwidth_bytes_per_s",
    "cache_bytes",  # bytes; without it roofline() would measure it
)


def store(rates: dict) -> dict:
    """Cache ``rates`` as the default device's roofline, so ``roofline()`` returns them without
    measuring (a roofline measured elsewhere, or tests that need no real one).  ``rates`` needs
    every key of ``STORED_RATES`` (FLOP/s, bytes/s, and the last-level cache in bytes); the
    device columns are added, and each rate's ``_min`` / ``_max`` default to the rate.  Returns
    the stored entry."""
    missing = set(STORED_RATES) - set(rates)
    if missing:
        raise ValueError(f"roofline.store: rates lack {', '.join(sorted(missing))}")
    rate_keys = [k for k in STORED_RATES if k.endswith("_per_s")]
    spread = {f"{k}{s}": rates[k] for k in rate_keys for s in ("_min", "_max")}
    info = device_info()
    key, cached = _key(info), _cached()
    cached[key] = {
        **info,
        **spread,
        "matmul_n": 0,
        "bandwidth_mib": 0,
        "read_bandwidth_method": "stored",
        **rates,
        "measured_at": "stored",
    }
    _write(cached)
    return cached[key]


def _key(info: dict) -> str:
    return (
        f"v3|{info['device_platform']}|{info['device_kind']}|{info['device_count']}|"
        f"{info['host_cpus']}|{info['jax_version']}"
    )


def _cached() -> dict:
    path = cache_dir() / "roofline.json"
    return json.loads(path.read_text()) if path.exists() else {}


def _write(cached: dict) -> None:
    """Replace the cache file atomically (a killed writer leaves the old one whole)."""
    path = cache_dir() / "roofline.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(cached, indent=1))
    os.replace(tmp, path)
