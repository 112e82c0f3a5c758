"""Multi-host training for real: two processes on this machine form one ``jax.distributed`` job.

Each process runs ``jscale train --mesh data=2,fsdp=2`` (``cli.main``: the same start-up,
``maybe_initialize_distributed``, mesh, ``train.train`` and ``sharding.put`` / ``to_host``
path as on a cluster) with two CPU devices of its own, so the mesh's 4 devices span both
processes: the data axis crosses them (gradients are all-reduced between processes over gloo)
and each process's 2 devices split the params along fsdp.  The job is configured the way a
job started by hand is (``sharding.maybe_initialize_distributed``): ``JAX_COORDINATOR_ADDRESS``
(a free local port), ``JAX_NUM_PROCESSES=2`` and ``JAX_PROCESS_ID``.

Every per-step loss, the held-out loss and the final params (gathered with ``to_host``) must
equal those of one process training the same config on one device.  The autotune's choice of
inference formulation, made by each process from its own timings, must be process 0's on both.
``jscale train`` writes no files: neither process may leave anything in its working directory.
The fast tests check how a job started by hand is detected and a bad environment refused.
"""

import json
import os
import re
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import jax
import numpy as np
import pytest

from jscale import sharding, train
from jscale.config import ConfigError, ModelConfig, TrainConfig

ROOT = Path(__file__).resolve().parent.parent

ARGS = [
    "train",
    "--mesh",
    "data=2,fsdp=2",
    "--d-model",
    "32",
    "--n-layers",
    "1",
    "--n-heads",
    "1",
    "--seq-len",
    "32",
    "--batch-size",
    "4",  # the global batch: one sequence per device
    "--steps",
    "20",  # two calls of steps_per_call = 10: the second overlaps the first's readback
    "--eval-tokens",
    "1024",
    "--precisions",
    "fp32",  # evaluates the params gathered with sharding.to_host
    "--quiet",
]

# One process of the job: the CLI as a user runs it, with train.train wrapped to keep its result.
WORKER = textwrap.dedent(r"""
    import dataclasses, json, sys
    import numpy as np
    from jscale import cli, sharding, train

    seen = {}
    _train = train.train

    def spy(cfg, tc, corpus, **kw):
        seen.update(cfg=cfg, tc=tc, mesh=kw["mesh"])
        seen["result"] = _train(cfg, tc, corpus, **kw)
        return seen["result"]

    train.train = spy
    rc = cli.main(sys.argv[2:])
    import jax

    r, mesh = seen["result"], seen["mesh"]
    host = sharding.to_host(r.params)
    # the autotune on each process ranks the formulations its own way (here: opposite ways)
    from jscale import autotune, formulation

    names = [f.name for f in formulation.CANDIDATES]
    ranked = names if jax.process_index() == 0 else names[::-1]
    autotune.timings = lambda *a, **k: {n: 1.0 + ranked.index(n) for n in names}
    form, _ = autotune.choice("int8", seen["cfg"])
    np.savez(sys.argv[1], *jax.tree.leaves(host))
    print("RESULT " + json.dumps({
        "rc": rc,
        "process": [jax.process_index(), jax.process_count()],
        "devices": [jax.device_count(), jax.local_device_count()],
        "mesh": {k: int(v) for k, v in mesh.shape.items()},
        "mesh_processes": [[d.process_index for d in row] for row in mesh.devices],
        "param_specs": sorted({str(x.sharding.spec) for x in jax.tree.leaves(r.params)}),
        "cfg": dataclasses.asdict(seen["cfg"]),
        "tc": dataclasses.asdict(seen["tc"]),
        "losses": r.losses_nats.tolist(),
        "eval_loss_nats": r.eval["eval_loss_nats"],
        "autotune": {"mine": ranked[0], "chosen": form.name},
    }))
""")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def two_processes(corpus, tmp_path_factory):  # the corpus fixture warms the token cache
    tmp = tmp_path_factory.mktemp("multihost")
    port = _free_port()
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("JSCALE_DISTRIBUTED", "SLURM_", "TPU_", "JAX_", "OMPI_"))
    }
    env.update(
        PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
        JAX_PLATFORMS="cpu",
        XLA_FLAGS=os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=2",
        JAX_COORDINATOR_ADDRESS=f"127.0.0.1:{port}",
        JAX_NUM_PROCESSES="2",
    )
    procs, cwds = [], []
    for i in range(2):
        cwd = tmp / f"process{i}"
        cwd.mkdir()
        cwds.append(cwd)
        procs.append(
            subprocess.Popen(
                [sys.executable, "-c", WORKER, str(tmp / f"params{i}.npz"), *ARGS],
                cwd=cwd,
                env={**env, "JAX_PROCESS_ID": str(i)},
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
        )
    outs = []
    try:
        for p in procs:  # a hang (a collective waiting for a peer that died) fails, not blocks
            outs.append(p.communicate(timeout=300))
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.communicate()
    for i, (p, (out, err)) in enumerate(zip(procs, outs)):
        assert p.returncode == 0, f"process {i}:\n{out[-2000:]}\n{err[-4000:]}"
    results = [
        json.loads(next(x for x in out.splitlines() if x.startswith("RESULT "))[len("RESULT ") :])
        for out, _ in outs
    ]
    params = [
        [f[k] for k in sorted(f, key=lambda k: int(k.split("_")[1]))]
        for f in (np.load(tmp / f"params{i}.npz") for i in range(2))
    ]
    return {"results": results, "params": params, "cwds": cwds, "stdout": [o for o, _ in outs]}


@pytest.fixture(scope="module")
def reference(two_processes, corpus):
    """One process, one device, the config the CLI built."""
    r0 = two_processes["results"][0]
    cfg, tc = ModelConfig(**r0["cfg"]), TrainConfig(**r0["tc"])
    r = train.train(cfg, tc, corpus, progress=False)
    return r, [np.asarray(x) for x in jax.tree.leaves(r.params)]


@pytest.mark.slow
def test_two_processes_form_one_job_over_one_mesh(two_processes):
    for i, r in enumerate(two_processes["results"]):
        assert r["rc"] == 0
        assert r["process"] == [i, 2]
        assert r["devices"] == [4, 2]  # 2 devices of its own, 4 in the job
        assert r["mesh"] == {"data": 2, "fsdp": 2}
        assert r["mesh_processes"] == [[0, 0], [1, 1]]  # the data axis crosses the processes
        assert r["param_specs"] == ["P('fsdp', None)", "P()", "P(None, 'fsdp')"]  # FSDP split
        assert "2 process(es)" in two_processes["stdout"][i]
    assert two_processes["results"][0]["tc"]["batch_size"] == 4  # the global batch


@pytest.mark.slow
def test_two_process_training_equals_one_process(two_processes, reference):
    ref, ref_params = reference
    assert len(ref.losses_nats) == 20
    for r, params in zip(two_processes["results"], two_processes["params"]):
        np.testing.assert_allclose(r["losses"], ref.losses_nats, rtol=1e-5)
        np.testing.assert_allclose(r["eval_loss_nats"], ref.eval["eval_loss_nats"], rtol=1e-5)
        assert [p.shape for p in params] == [p.shape for p in ref_params]
        # 20 AdamW steps of lr ~3e-3; float rounding of a different reduction order is ~1e-6
        assert max(float(np.max(np.abs(a - b))) for a, b in zip(params, ref_params)) < 1e-4
    # both processes hold the same global values (to_host gathers across processes)
    a, b = two_processes["params"]
    assert all(np.array_equal(x, y) for x, y in zip(a, b))


@pytest.mark.slow
def test_every_process_runs_process_0s_formulation(two_processes):
    # a sharded program compiled in two formulations exchanges mismatched collectives (gloo:
    # "Received data size doesn't match expected size"), so process 0's choice holds everywhere
    a, b = (r["autotune"] for r in two_processes["results"])
    assert a["mine"] != b["mine"]
    assert a["chosen"] == b["chosen"] == a["mine"]


@pytest.mark.slow
def test_train_writes_no_files_on_any_process(two_processes):
    for cwd in two_processes["cwds"]:
        assert sorted(p.name for p in cwd.iterdir()) == []


def test_a_job_started_by_hand_is_detected_from_its_environment(monkeypatch):
    for var in (
        "JSCALE_DISTRIBUTED",
        "SLURM_STEP_NUM_TASKS",
        "SLURM_NTASKS",
        "TPU_WORKER_HOSTNAMES",
    ):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("JAX_NUM_PROCESSES", "1")
    assert sharding.multihost_env() is None
    monkeypatch.setenv("JAX_NUM_PROCESSES", "2")
    assert sharding.multihost_env() == "JAX_NUM_PROCESSES=2"
    monkeypatch.setenv("JSCALE_DISTRIBUTED", "0")
    assert sharding.multihost_env() is None


@pytest.mark.parametrize(
    "num, pid, message",
    [
        ("2", "2", "JAX_PROCESS_ID: 2 is not below JAX_NUM_PROCESSES = 2"),
        ("two", "0", "JAX_NUM_PROCESSES: must be a non-negative integer, got 'two'"),
        ("2", "-1", "JAX_PROCESS_ID: must be a non-negative integer, got '-1'"),
    ],
)
def test_a_bad_job_environment_is_refused_before_starting(monkeypatch, num, pid, message):
    monkeypatch.setenv("JSCALE_DISTRIBUTED", "1")  # detected whatever JAX_NUM_PROCESSES says
    monkeypatch.setenv("JAX_NUM_PROCESSES", num)
    monkeypatch.setenv("JAX_PROCESS_ID", pid)
    monkeypatch.setattr(jax.distributed, "initialize", None)  # never reached
    with pytest.raises(ConfigError, match=re.escape(message)):
        sharding.maybe_initialize_distributed()
