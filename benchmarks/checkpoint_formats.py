"""Training checkpoints: jscale's ``.npz`` (temp file + fsync + ``os.replace``) against orbax.

The state is what continuing or branching a run needs: params, the optimizer state of
``jscale.train.make_optimizer`` (global-norm clip + Adam moments + masked decoupled weight
decay: AdamW without its learning rate, so count + mu + nu) and the step.  The params mirror
jscale's tree (``embed``, ``block_i/{attn_norm,qkv,out,mlp_norm,up,down}``, ``final_norm``;
vocab 256, tied embeddings) at about 1e4, 1e5, 1e6 and 1e7 parameters (14-38 leaves), filled
with random float32 values (nothing compresses).  Measured, for each size and format:

* save and restore wall time, ``--repeats`` timed calls after one untimed warm-up (reported
  as "1st"): median and min-max.  Every save writes a fresh path; restores rebuild the
  arrays into a known structure (``jax.eval_shape`` / ``ShapeDtypeStruct`` template) and
  block until they are ready.  Restores read what was just written, so from the page cache;
* bytes on disk (sum of file sizes) and files per checkpoint.

Formats: ``npz`` (this file's copy of ``jscale.checkpoint.save``/``load``: one leaf per entry
under its ``jax.tree_util.keystr`` path, written to a temporary file, fsync'ed, renamed);
``orbax-std`` (``orbax.checkpoint.StandardCheckpointer``: save, then ``wait_until_finished``);
``orbax-pytree`` (``orbax.checkpoint.PyTreeCheckpointer``, synchronous).

Kill test (``--kill-trials``, 0 to skip): a child process saves the 1e7 state in a loop and
is sent SIGKILL at spread-out times; then the parent checks what is left and what restores.
Scenarios: npz overwriting one path (jscale's pattern); orbax ``CheckpointManager`` writing
step after step; orbax ``StandardCheckpointer.save(path, force=True)`` overwriting one path.

    python benchmarks/checkpoint_formats.py            # orbax-checkpoint optional

Runs without orbax-checkpoint (it says so and measures npz only).  ~1-2 min on 2 cores.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax

try:
    import orbax.checkpoint as ocp
except ImportError:
    ocp = None

VOCAB = 256
# target -> (d_model, n_layers): 6 leaves per block + embedding + final norm
SIZES = {1e4: (16, 2), 1e5: (40, 5), 1e6: (128, 5), 1e7: (384, 6)}


# --- the state ------------------------------------------------------------------------------


def make_optimizer():
    """jscale.train.make_optimizer's chain (AdamW without the learning rate)."""
    return optax.chain(
        optax.clip_by_global_norm(1.0),
        optax.scale_by_adam(b1=0.9, b2=0.95),
        optax.add_decayed_weights(0.1, mask=lambda p: jax.tree.map(lambda x: x.ndim >= 2, p)),
    )


def make_state(d: int, n_layers: int, step: int = 1000, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)

    def w(*shape):
        return jnp.asarray(rng.standard_normal(shape, np.float32) * 0.02)

    params = {"embed": {"embedding": w(VOCAB, d)}, "final_norm": {"scale": w(d)}}
    for i in range(n_layers):
        params[f"block_{i}"] = {
            "attn_norm": {"scale": w(d)},
            "qkv": {"kernel": w(d, 3 * d)},
            "out": {"kernel": w(d, d)},
            "mlp_norm": {"scale": w(d)},
            "up": {"kernel": w(d, 4 * d)},
            "down": {"kernel": w(4 * d, d)},
        }
    opt = make_optimizer()
    grads = jax.tree.map(lambda p: w(*p.shape), params)  # one update: mu, nu non-zero
    _, opt_state = opt.update(grads, opt.init(params), params)
    state = {"params": params, "opt_state": opt_state, "step": jnp.asarray(step, jnp.int32)}
    return jax.block_until_ready(state)


def abstract(state):
    return jax.eval_shape(lambda: state)


def n_params(tree) -> int:
    return sum(x.size for x in jax.tree.leaves(tree))


# --- npz: mirrors jscale/checkpoint.py ------------------------------------------------------


def npz_save(path: Path, state, meta: dict | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    leaves = jax.tree_util.tree_flatten_with_path(state)[0]
    arrays = {jax.tree_util.keystr(k): np.asarray(v) for k, v in leaves}
    arrays["__meta__"] = np.frombuffer(json.dumps(meta or {}, sort_keys=True).encode(), np.uint8)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "wb") as f:
        np.savez(f, **arrays)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    return path


def npz_load(path: Path, template):
    paths, treedef = jax.tree_util.tree_flatten_with_path(template)
    with np.load(path) as z:
        stored = {k: z[k] for k in z.files}
    stored.pop("__meta__", None)
    leaves = []
    for k, spec in paths:
        name = jax.tree_util.keystr(k)
        a = stored.pop(name, None)
        if a is None or a.shape != spec.shape or a.dtype != spec.dtype:
            raise ValueError(f"{path}: {name} is {None if a is None else a.shape}")
        leaves.append(jnp.asarray(a))
    if stored:
        raise ValueError(f"{path}: unexpected {sorted(stored)}")
    return jax.tree_util.tree_unflatten(treedef, leaves)


# --- orbax ----------------------------------------------------------------------------------


class OrbaxStd:
    name = "orbax-std"

    def __init__(self):
        self.ck = ocp.StandardCheckpointer()

    def save(self, path: Path, state):
        self.ck.save(path, state)
        self.ck.wait_until_finished()

    def load(self, path: Path, template):
        return self.ck.restore(path, template)

    def close(self):
        self.ck.close()


class OrbaxPyTree:
    name = "orbax-pytree"

    def __init__(self):
        self.ck = ocp.PyTreeCheckpointer()

    def save(self, path: Path, state):
        self.ck.save(path, args=ocp.args.PyTreeSave(state))

    def load(self, path: Path, template):
        restore_args = ocp.checkpoint_utils.construct_restore_args(template)
        return self.ck.restore(
            path, args=ocp.args.PyTreeRestore(item=template, restore_args=restore_args)
        )

    def close(self):
        self.ck.close()


class Npz:
    name = "npz"

    def save(self, path: Path, state):
        npz_save(path.with_suffix(".npz"), state)

    def load(self, path: Path, template):
        return npz_load(path.with_suffix(".npz"), template)

    def close(self):
        pass


def disk_usage(path: Path) -> tuple[int, int]:
    """(bytes, files) of a file or a directory tree."""
    if path.is_file():
        return path.stat().st_size, 1
    size = files = 0
    for root, _, names in os.walk(path):
        for n in names:
            size += os.stat(os.path.join(root, n)).st_size
            files += 1
    return size, files


def remove(path: Path):
    if path.is_dir():
        shutil.rmtree(path)
    elif path.exists():
        path.unlink()


def bench_one(fmt, state, workdir: Path, repeats: int) -> dict:
    template = abstract(state)
    ref = np.asarray(state["params"]["embed"]["embedding"])
    saves, loads, first = [], [], {}
    for i in range(repeats + 1):
        p = workdir / f"{fmt.name}_{i}"
        target = p.with_suffix(".npz") if fmt.name == "npz" else p
        t0 = time.perf_counter()
        fmt.save(p, state)
        t1 = time.perf_counter()
        out = jax.block_until_ready(fmt.load(p, template))
        t2 = time.perf_counter()
        if not np.array_equal(np.asarray(out["params"]["embed"]["embedding"]), ref):
            raise AssertionError(f"{fmt.name}: restored params differ")
        if jax.tree.structure(out) != jax.tree.structure(state):
            raise AssertionError(f"{fmt.name}: restored structure differs")
        if i == 0:
            first = {"save": t1 - t0, "load": t2 - t1}
            size, files = disk_usage(target)
        else:
            saves.append(t1 - t0)
            loads.append(t2 - t1)
        remove(target)
    return {"save": saves, "load": loads, "first": first, "bytes": size, "files": files}


def fmt_t(ts) -> str:
    ms = [t * 1e3 for t in ts]
    return f"{statistics.median(ms):8.1f} [{min(ms):.1f}-{max(ms):.1f}]"


# --- kill test ------------------------------------------------------------------------------


def child(scenario: str, directory: str):
    """Save the 1e7 state in a loop until killed."""
    d, n = SIZES[1e7]
    state = make_state(d, n)
    directory = Path(directory)
    if scenario == "npz":
        path = directory / "ckpt.npz"
        npz_save(path, state)  # a complete checkpoint before the kill window
        print("READY", flush=True)
        for step in range(1, 10**6):
            npz_save(path, {**state, "step": jnp.asarray(step, jnp.int32)})
    elif scenario == "orbax-manager":
        mngr = ocp.CheckpointManager(directory)
        mngr.save(0, args=ocp.args.StandardSave(state))
        mngr.wait_until_finished()
        print("READY", flush=True)
        for step in range(1, 10**6):
            step_state = {**state, "step": jnp.asarray(step, jnp.int32)}
            mngr.save(step, args=ocp.args.StandardSave(step_state))
            mngr.wait_until_finished()
    elif scenario == "orbax-force":
        ck = ocp.StandardCheckpointer()
        path = directory / "ckpt"
        ck.save(path, state)
        ck.wait_until_finished()
        print("READY", flush=True)
        for step in range(1, 10**6):
            ck.save(path, {**state, "step": jnp.asarray(step, jnp.int32)}, force=True)
            ck.wait_until_finished()


def inspect_after_kill(scenario: str, directory: Path, template) -> str:
    names = sorted(os.listdir(directory))
    tmp = [n for n in names if "tmp" in n]
    try:
        if scenario == "npz":
            out = npz_load(directory / "ckpt.npz", template)
            got = f"restored step {int(out['step'])}"
            npz_save(directory / "ckpt.npz", out)  # the resumed run's next save
        elif scenario == "orbax-manager":
            mngr = ocp.CheckpointManager(directory)
            latest = mngr.latest_step()
            out = mngr.restore(latest, args=ocp.args.StandardRestore(template))
            got = (
                f"latest_step()={latest} of {list(mngr.all_steps())}, "
                f"restored step {int(out['step'])}"
            )
            mngr.save(latest + 1, args=ocp.args.StandardSave(out))  # the resumed run's next save
            mngr.wait_until_finished()
            mngr.close()
        else:
            if not (directory / "ckpt").exists():
                return f"NO CHECKPOINT: ckpt/ missing; left: {names}"
            out = ocp.StandardCheckpointer().restore(directory / "ckpt", template)
            got = f"restored step {int(out['step'])}"
    except Exception as e:  # noqa: BLE001 - report whatever a restore does
        return f"RESTORE FAILED {type(e).__name__}: {str(e)[:120]}; left: {names}"
    after = [n for n in sorted(os.listdir(directory)) if "tmp" in n]
    return f"{got}; temp left: {tmp or 'none'}, after a resumed save: {after or 'none'}"


def kill_test(trials: int, workdir: Path):
    scenarios = ["npz"] + (["orbax-manager", "orbax-force"] if ocp else [])
    template = abstract(make_state(*SIZES[1e7]))
    print(f"\nKill test: SIGKILL a child saving the 1e7 state in a loop, {trials} trials each")
    for sc in scenarios:
        for k in range(trials):
            delay = 0.05 + 1.2 * k / max(trials - 1, 1)
            d = workdir / f"kill_{sc}_{k}"
            d.mkdir()
            proc = subprocess.Popen(
                [sys.executable, __file__, "--child", sc, str(d)],
                stdout=subprocess.PIPE,
                stderr=subprocess.DEVNULL,
                text=True,
            )
            if proc.stdout.readline().strip() != "READY":
                proc.kill()
                print(f"  {sc:14s} child failed to start")
                continue
            time.sleep(delay)
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait()
            print(f"  {sc:14s} kill at +{delay:.2f}s: {inspect_after_kill(sc, d, template)}")
            shutil.rmtree(d)


# --- main -----------------------------------------------------------------------------------


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--sizes", default="1e4,1e5,1e6,1e7")
    ap.add_argument("--kill-trials", type=int, default=3)
    ap.add_argument("--dir", default=None, help="where to write (default: a temp dir)")
    ap.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        return child(*args.child)

    print(
        f"jax {jax.__version__}, optax {optax.__version__}, numpy {np.__version__}, "
        f"{os.cpu_count()} CPUs, backend {jax.default_backend()}"
    )
    if ocp is None:
        print("orbax-checkpoint is not installed: measuring npz only")
        fmts = [Npz()]
    else:
        import importlib.metadata

        print(f"orbax-checkpoint {importlib.metadata.version('orbax-checkpoint')}")
        fmts = [Npz(), OrbaxStd(), OrbaxPyTree()]

    workdir = Path(tempfile.mkdtemp(prefix="ckpt_bench_", dir=args.dir))
    try:
        rows = []
        for s in [float(x) for x in args.sizes.split(",")]:
            state = make_state(*SIZES[s])
            info = (
                n_params(state["params"]),
                n_params(state),
                len(jax.tree.leaves(state["params"])),
                len(jax.tree.leaves(state)),
            )
            res = {f.name: bench_one(f, state, workdir, args.repeats) for f in fmts}
            rows.append((s, info, res))

        print(
            f"\nSave / restore wall time, ms: median [min-max] of {args.repeats} "
            f"(after 1 untimed call, '1st' = its save/restore ms)"
        )
        print(
            f"{'size':>5} {'params':>9} {'state':>9} {'leaves':>6}  {'format':12s} "
            f"{'save ms':>22} {'restore ms':>22} {'1st':>13} {'bytes':>11} {'files':>5} "
            f"{'save x':>6} {'rest x':>6}"
        )
        for s, (np_, ns, lp, ls), res in rows:
            base = res["npz"]
            for name, r in res.items():
                rs = statistics.median(r["save"]) / statistics.median(base["save"])
                rl = statistics.median(r["load"]) / statistics.median(base["load"])
                first = f"{r['first']['save'] * 1e3:.0f}/{r['first']['load'] * 1e3:.0f}"
                print(
                    f"{s:5.0e} {np_:9d} {ns:9d} {lp:>2d}/{ls:<3d}  {name:12s} "
                    f"{fmt_t(r['save']):>22} {fmt_t(r['load']):>22} {first:>13} "
                    f"{r['bytes']:11d} {r['files']:5d} {rs:6.2f} {rl:6.2f}"
                )
        print("(ratios: format / npz, of medians; leaves: params/whole state)")
        for f in fmts:
            f.close()
        if args.kill_trials:
            kill_test(args.kill_trials, workdir)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
