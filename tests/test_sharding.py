"""Sharded training and inference on 4 fake CPU devices, mesh specs and their errors.

The multi-device checks run in one subprocess (``XLA_FLAGS`` must be set before JAX starts):
a tiny model trains a few steps on one device and on meshes (data=4), (fsdp=4) and
(data=2, fsdp=2); per-step losses and final params must agree within float rounding, and the
params must really be split.  A sharded prefill + decode on (data=2, fsdp=2) (batch and heads
split) must give the unsharded tokens.
"""

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from jscale import sharding
from jscale.config import ConfigError

ROOT = Path(__file__).resolve().parent.parent

SCRIPT = textwrap.dedent(r"""
    import json
    import jax, jax.numpy as jnp, numpy as np
    from jscale import data, latency, model, precision, sharding, train
    from jscale.config import ConfigError, ModelConfig, TrainConfig

    assert jax.device_count() == 4, jax.devices()
    out = {}
    cfg = ModelConfig(d_model=32, n_layers=1, n_heads=4, max_seq_len=32)
    tc = TrainConfig(steps=4, batch_size=8, seq_len=32, eval_tokens=1024, steps_per_call=2)
    corpus = data.load_corpus()
    ref = train.train(cfg, tc, corpus, progress=False)
    ref_params = [np.asarray(x) for x in jax.tree.leaves(ref.params)]
    out["ref_losses"] = ref.losses_nats.tolist()
    out["ref_eval"] = ref.eval["eval_loss_nats"]
    for name, kw in {
        "data4": dict(data=4), "fsdp4": dict(data=1, fsdp=4), "data2fsdp2": dict(data=2, fsdp=2)
    }.items():
        mesh = sharding.make_mesh(**kw)
        r = train.train(cfg, tc, corpus, progress=False, mesh=mesh,
                        evaluate_heldout=name == "data2fsdp2")
        leaves = jax.tree_util.tree_flatten_with_path(r.params)[0]
        out[name] = {
            "losses": r.losses_nats.tolist(), "eval": r.eval.get("eval_loss_nats"),
            "param_max_abs_diff": max(float(np.max(np.abs(np.asarray(v) - p)))
                                      for (_, v), p in zip(leaves, ref_params)),
            "shards": {
                jax.tree_util.keystr(k): [
                    list(v.shape), str(v.sharding.spec), len(v.sharding.device_set),
                    sorted({tuple(s.data.shape) for s in v.addressable_shards}),
                ]
                for k, v in leaves
            },
        }
    # optimizer state follows the params (AdamW moments)
    mesh = sharding.make_mesh(data=1, fsdp=4)
    opt = train.make_optimizer(tc)
    o_sh = sharding.tree_shardings(jax.eval_shape(opt.init, ref.params), mesh)
    out["opt_specs"] = sorted({str(s.spec) for s in jax.tree.leaves(o_sh)})
    # the batch must divide over data x fsdp, checked before compiling
    try:
        train.train(cfg, TrainConfig(steps=1, batch_size=6, seq_len=32, eval_tokens=1024), corpus,
                    progress=False, mesh=sharding.make_mesh(data=2, fsdp=2))
        out["batch_error"] = None
    except ConfigError as e:
        out["batch_error"] = str(e)
    # sharded inference on (data=2, fsdp=2) (batch and heads both split): prefill + decode give
    # the unsharded tokens and logits
    lcfg = ModelConfig(d_model=32, n_layers=2, n_heads=4, max_seq_len=32)
    params = model.init_params(lcfg, jax.random.key(0))
    prompt = jax.random.randint(jax.random.key(1), (4, 12), 0, 256, jnp.int32)
    out["inference"] = {}
    apply = jax.jit(model.apply, static_argnames=("cfg", "policy"))
    mesh = sharding.make_mesh(data=2, fsdp=2)
    for pol in ("fp32", "w8a8"):
        qp = precision.convert_params(params, pol)
        l0 = apply(qp, lcfg, prompt, policy=pol)
        t0, c0 = latency.prefill(qp, lcfg, prompt, 6, pol)
        g0, _ = latency.decode(qp, c0, t0, cfg=lcfg, gen_tokens=6, policy=pol)
        sq = sharding.put(qp, sharding.tree_shardings(qp, mesh))
        sp = sharding.put(prompt, sharding.tokens_sharding(mesh, 4))
        t1, c1 = latency.prefill(sq, lcfg, sp, 6, pol, mesh=mesh)
        k = c1["layers"][0]["k"]
        cache_spec, cache_shard = str(k.sharding.spec), list(k.addressable_shards[0].data.shape)
        g1, _ = latency.decode(sq, c1, t1, cfg=lcfg, gen_tokens=6, policy=pol, mesh=mesh)
        l1 = apply(sq, lcfg, sp, policy=pol)
        out["inference"][f"{pol}-data2fsdp2"] = {
            "same_tokens": bool(np.array_equal(np.asarray(g0), np.asarray(g1))),
            "logit_max_abs_diff": float(np.max(np.abs(np.asarray(l0) - np.asarray(l1)))),
            "cache_spec": cache_spec, "cache_shard": cache_shard}
    # the cache rule on (fsdp=4): heads split four ways, batch whole (the rule alone, no compile)
    s4 = sharding.cache_shardings(c1, sharding.make_mesh(data=1, fsdp=4))["layers"][0]["k"]
    out["cache_shard_fsdp4"] = list(s4.shard_shape(c1["layers"][0]["k"].shape))
    roof = {"matmul_flops_per_s": 1e11, "read_bandwidth_bytes_per_s": 1e10}  # not measured here
    r = latency.measure_latency(params, lcfg, "fp32", batch=2, prompt_tokens=8, gen_tokens=4,
                                repeats=1, warmup=0, roof=roof,
                                mesh=sharding.make_mesh(data=2, fsdp=2))
    out["latency"] = {k: r[k] for k in ("mesh_shape", "mesh_devices", "decode_ms_per_token_median")}
    print("RESULT " + json.dumps(out))
""")


@pytest.fixture(scope="module")
def sharded(corpus):  # the corpus fixture warms the token cache the subprocess reads
    env = {
        **os.environ,
        "XLA_FLAGS": os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=4",
        "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
        "JAX_PLATFORMS": "cpu",
    }
    p = subprocess.run(
        [sys.executable, "-c", SCRIPT],
        capture_output=True,
        text=True,
        env=env,
        cwd=ROOT,
        timeout=600,
    )
    assert p.returncode == 0, p.stderr[-4000:]
    line = next(x for x in p.stdout.splitlines() if x.startswith("RESULT "))
    return json.loads(line[len("RESULT ") :])


@pytest.mark.slow
@pytest.mark.xdist_group("sharded")  # one worker builds the module fixture
@pytest.mark.parametrize("mesh", ["data4", "fsdp4", "data2fsdp2"])
def test_sharded_training_matches_one_device(sharded, mesh):
    r = sharded[mesh]
    np.testing.assert_allclose(r["losses"], sharded["ref_losses"], rtol=1e-5)
    assert r["param_max_abs_diff"] < 1e-4  # AdamW steps of ~lr = 1e-3 scale; rounding is ~1e-6
    if r["eval"] is not None:
        assert abs(r["eval"] - sharded["ref_eval"]) < 1e-4


@pytest.mark.slow
@pytest.mark.xdist_group("sharded")  # one worker builds the module fixture
def test_fsdp_params_really_are_split(sharded):
    s = sharded["fsdp4"]["shards"]
    # [global shape, spec, devices, local shard shapes]
    assert s["['embed']['embedding']"][:2] == [[256, 32], "P('fsdp', None)"]
    assert s["['embed']['embedding']"][2:] == [4, [[64, 32]]]
    assert s["['block_0']['qkv']['kernel']"][3] == [[32, 24]]  # [32, 96]: the largest dim split
    assert s["['block_0']['down']['kernel']"][3] == [[32, 32]]  # [128, 32]
    assert s["['block_0']['attn_norm']['scale']"][1:] == ["P()", 4, [[32]]]  # vectors replicated
    d = sharded["data2fsdp2"]["shards"]
    assert d["['embed']['embedding']"][3] == [[128, 32]]
    # pure data parallelism: every device holds every param whole
    assert all(v[1] == "P()" and v[3] == [v[0]] for v in sharded["data4"]["shards"].values())


@pytest.mark.slow
@pytest.mark.xdist_group("sharded")  # one worker builds the module fixture
def test_optimizer_state_follows_params(sharded):
    assert sharded["opt_specs"] == ["P('fsdp', None)", "P()", "P(None, 'fsdp')"]


@pytest.mark.slow
@pytest.mark.xdist_group("sharded")  # one worker builds the module fixture
def test_batch_not_divisible_by_mesh_is_a_clear_error(sharded):
    e = sharded["batch_error"]
    assert e and "TrainConfig.batch_size = 6" in e and "data x fsdp = 4" in e


@pytest.mark.slow
@pytest.mark.xdist_group("sharded")  # one worker builds the module fixture
def test_sharded_inference_matches_unsharded(sharded):
    inf = sharded["inference"]
    assert set(inf) == {"fp32-data2fsdp2", "w8a8-data2fsdp2"}
    for k, v in inf.items():
        assert v["same_tokens"], k
        assert v["logit_max_abs_diff"] < 1e-4, k
    # KV cache [B=4, H=4, S=18, K=8]: batch over data, heads over fsdp
    assert inf["fp32-data2fsdp2"]["cache_shard"] == [2, 2, 18, 8]
    assert sharded["cache_shard_fsdp4"] == [4, 1, 18, 8]
    lat = sharded["latency"]
    assert lat["mesh_shape"] == "data=2,fsdp=2" and lat["mesh_devices"] == 4
    assert lat["decode_ms_per_token_median"] > 0


# ---------------------------------------------------------------------- in-process: specs and rules


def test_mesh_on_one_device_and_bad_sizes():
    import jax

    m = sharding.make_mesh()
    assert dict(m.shape) == {"data": jax.device_count(), "fsdp": 1}
    with pytest.raises(ValueError, match=r"mesh: data=3 x fsdp=1 = 3 devices"):
        sharding.make_mesh(data=3)
    with pytest.raises(ValueError, match=r"mesh.fsdp: 2 does not divide"):
        sharding.make_mesh(data=-1, fsdp=2, devices=jax.devices()[:1])
    with pytest.raises(ValueError, match=r"mesh.fsdp: must be a positive integer or -1"):
        sharding.make_mesh(fsdp=0)
    with pytest.raises(ValueError, match="at most one"):
        sharding.make_mesh(data=-1, fsdp=-1)


def test_parse_mesh():
    assert sharding.parse_mesh("data=2,fsdp=2") == {"data": 2, "fsdp": 2}
    assert sharding.parse_mesh(" fsdp = -1 ") == {"fsdp": -1}
    for bad, msg in [
        ("model=2", "not AXIS=SIZE"),
        ("data", "not AXIS=SIZE"),
        ("data=x", "mesh.data: not an integer"),
        ("data=2,data=2", "given twice"),
        ("fsdp=0", "mesh.fsdp: must be"),
        ("", "empty"),
    ]:
        with pytest.raises(ConfigError, match=msg):
            sharding.parse_mesh(bad)


def test_fsdp_rule():
    from jax.sharding import PartitionSpec as P

    assert sharding.param_spec((256, 32), 4) == P("fsdp", None)
    assert sharding.param_spec((32, 96), 4) == P(None, "fsdp")
    assert sharding.param_spec((32, 32), 4) == P("fsdp", None)  # a tie: the first dimension
    assert sharding.param_spec((96, 30), 4) == P("fsdp", None)
    assert sharding.param_spec((30, 6), 4) == P()  # nothing divisible: replicated
    assert sharding.param_spec((30, 8), 4) == P(None, "fsdp")  # the largest divisible one
    assert sharding.param_spec((128,), 4) == P()  # vectors replicated
    assert sharding.param_spec((256, 32), 1) == P()


def test_cli_mesh_errors(capsys):
    from jscale.cli import main

    with pytest.raises(SystemExit) as e:
        main(["train", "--mesh", "model=2", "--steps", "1"])
    assert e.value.code == 2 and "--mesh" in capsys.readouterr().err
    assert main(["train", "--mesh", "data=3", "--steps", "1", "--quiet"]) == 2
    assert "data=3 x fsdp=1 = 3 devices" in capsys.readouterr().err


SWEEP = """
name = "m"
[sizes]
params_non_embedding = [1e4]
[tokens]
fixed = 1e4
[train]
batch_size = 8
"""


def test_sweep_mesh_table_and_hash(tmp_path):
    from jscale import sweep as sw
    from jscale.sweep_config import parse_sweep

    plain = parse_sweep(SWEEP)
    assert plain.mesh is None
    m = parse_sweep(SWEEP + "[mesh]\nfsdp = 2\n")
    assert m.mesh == {"data": -1, "fsdp": 2}
    for bad, msg in [
        ("[mesh]\nmodel = 2\n", "mesh.model: unknown key"),
        ("[mesh]\ndata = 0\n", "mesh.data: must be"),
        ("[mesh]\ndata = -1\nfsdp = -1\n", "at most one"),
        ("[mesh]\ndata = 3\n", "must divide train.batch_size"),
        ("[mesh]\nfsdp = true\n", "mesh.fsdp"),
    ]:
        with pytest.raises(ConfigError, match=msg):
            parse_sweep(SWEEP + bad)
    # the hash of a record without [mesh] is what it was before meshes existed
    import dataclasses

    h = sw._config_hash(plain, "t", "fp32")
    assert h == sw._sha(
        {"train": "t", "precision": "fp32", "latency": dataclasses.asdict(plain.latency)}
    )
    assert sw._config_hash(m, "t", "fp32") != h


def test_multihost_detection(monkeypatch):
    for v in ("JSCALE_DISTRIBUTED", "SLURM_STEP_NUM_TASKS", "SLURM_NTASKS", "TPU_WORKER_HOSTNAMES"):
        monkeypatch.delenv(v, raising=False)
    assert sharding.multihost_env() is None
    assert sharding.maybe_initialize_distributed() is False
    monkeypatch.setenv("SLURM_NTASKS", "1")  # an array-job task: independent
    assert sharding.multihost_env() is None
    monkeypatch.setenv("SLURM_NTASKS", "4")  # srun -n 4
    assert sharding.multihost_env() == "SLURM_NTASKS=4"
    monkeypatch.setenv("JSCALE_DISTRIBUTED", "0")  # explicit off wins
    assert sharding.multihost_env() is None
    monkeypatch.delenv("SLURM_NTASKS")
    monkeypatch.setenv("TPU_WORKER_HOSTNAMES", "a,b")
    monkeypatch.setenv("JSCALE_DISTRIBUTED", "")
    assert "2 hosts" in sharding.multihost_env()
    monkeypatch.setenv("TPU_WORKER_HOSTNAMES", "a")
    monkeypatch.setenv("JSCALE_DISTRIBUTED", "1")
    assert sharding.multihost_env() == "JSCALE_DISTRIBUTED=1"
