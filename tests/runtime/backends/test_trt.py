"""The TensorRT runner's own logic, on CPU.

Pure planning functions are tested directly. The runner class is exercised end to end against
``_StandIn`` below: a stand-in for the few TensorRT / cuda-python calls the runner makes,
defined here only (it is no backend: nothing outside this file can select it). Its "device
memory" is real host memory reached through raw addresses, and its engine evaluates the bundle's
ONNX graph with ONNX Runtime on exactly the shapes and addresses the runner bound, so wrong
pointers, shapes, masks or commit copies show up as wrong numbers.
"""

from __future__ import annotations

import ctypes
from types import SimpleNamespace

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from stagedx.errors import ContractError, StagedxError
from stagedx.manifest import ArchDims, EngineEntry, ModelEntry
from stagedx.runtime.backends import trt as tr
from stagedx.runtime.runner import chain_mask

GPU = tr.GpuInfo("NVIDIA H100 80GB HBM3", "9.0")


def _entry(n_layers=2, heads=2, head_dim=4, vocab=11, topk=3) -> ModelEntry:
    arch = ArchDims("gpt2", n_layers, heads, heads, head_dim, heads * head_dim, vocab, 64)
    return ModelEntry(
        role="draft",
        file="draft.onnx",
        sha256="0",
        dtype="fp32",
        topk=topk,
        arch=arch,
        n_params=1,
        weight_bytes=4,
        source={},
    )


# -- pure planning ------------------------------------------------------------------------------
def test_plan_chunks():
    assert tr.plan_chunks(5, 8) == [(0, 5)]
    assert tr.plan_chunks(8, 8) == [(0, 8)]
    assert tr.plan_chunks(19, 8) == [(0, 8), (8, 16), (16, 19)]
    with pytest.raises(ContractError):
        tr.plan_chunks(0, 8)


def test_chunk_mask_hides_reserved_rows_and_keeps_tree_structure():
    tree = np.array([[1, 0, 0, 0], [1, 1, 0, 0], [1, 0, 1, 0], [1, 0, 1, 1]], dtype=bool)
    m = tr.chunk_mask(tree, (0, 4), length=3, reserved=1)
    assert m.shape == (4, 1 + 3 + 4)
    assert not m[:, 0].any()
    assert m[:, 1:4].all()
    np.testing.assert_array_equal(m[:, 4:], tree)
    # second chunk sees the first chunk's rows through the past, as the tree allows
    m2 = tr.chunk_mask(tree, (2, 4), length=3, reserved=1)
    assert m2.shape == (2, 1 + 3 + 4)
    np.testing.assert_array_equal(m2[:, 4:], tree[2:4, :4])


def _apply(plan, cache):
    for run in plan:
        src = set(range(run.src, run.src + run.n))
        dst = set(range(run.dst, run.dst + run.n))
        assert not src & dst, "cudaMemcpy ranges must be disjoint"
        cache[run.dst : run.dst + run.n] = cache[run.src : run.src + run.n].copy()


@settings(max_examples=200, deadline=None)
@given(t=st.integers(1, 40), data=st.data(), base=st.integers(0, 9))
def test_plan_commit_moves_exactly_the_accepted_rows(t, data, base):
    rows = sorted(data.draw(st.sets(st.integers(0, t - 1), max_size=t)))
    cache = np.arange(base + t + 5) * 10
    before = cache.copy()
    plan = tr.plan_commit(rows, base, t)
    _apply(plan, cache)
    np.testing.assert_array_equal(cache[base : base + len(rows)], before[[base + r for r in rows]])
    np.testing.assert_array_equal(cache[:base], before[:base])  # committed rows untouched
    moved = sum(r.n for r in plan)
    assert moved == sum(1 for j, r in enumerate(rows) if r != j)  # rows in place are not copied


def test_plan_commit_uses_one_copy_per_run_of_rows():
    assert tr.plan_commit([0, 1, 2], 7, 5) == []  # prefill / chain accepted in place
    assert tr.plan_commit([0, 3, 4], 7, 6) == [tr.CopyRun(10, 8, 2)]
    # a run shifted by 1 overlapping itself is split into disjoint pieces
    assert tr.plan_commit([1, 2, 3], 0, 4) == [tr.CopyRun(1, 0, 1), tr.CopyRun(2, 1, 1), tr.CopyRun(3, 2, 1)]
    with pytest.raises(ContractError, match="increasing"):
        tr.plan_commit([2, 1], 0, 4)
    with pytest.raises(ContractError, match="outside"):
        tr.plan_commit([4], 0, 4)


def test_plan_bindings_binds_the_past_as_a_prefix_and_new_rows_after_it():
    entry = _entry(n_layers=2, heads=2, head_dim=4)
    layout = tr.DeviceLayout(
        k_cache=(1000, 2000),
        v_cache=(3000, 4000),
        row_bytes=32,
        inputs={"input_ids": 10, "position_ids": 20, "tree_mask": 30},
        outputs={"logits": 40, "topk_values": 50, "topk_indices": 60},
    )
    plan = tr.plan_bindings(entry, layout, past_rows=5, t=3)
    assert plan["past_key.1"] == (2000, (5, 2, 4))
    assert plan["past_value.0"] == (3000, (5, 2, 4))
    assert plan["new_key.1"] == (2000 + 5 * 32, None)
    assert plan["new_value.1"] == (4000 + 5 * 32, None)
    assert plan["tree_mask"] == (30, (3, 8))
    assert plan["input_ids"] == (10, (3,))
    assert plan["topk_indices"] == (60, None)
    assert len(plan) == 3 + 3 + 4 * 2


# -- engine records -----------------------------------------------------------------------------
def _record(**kw):
    r = {
        "role": "oracle",
        "file": "engines/o.plan",
        "sha256": "x",
        "tensorrt_version": "10.9.0",
        "gpu_name": GPU.name,
        "compute_capability": "9.0",
        "max_tree": 8,
        "max_context": 64,
        "reserved_slots": 1,
    }
    r.update(kw)
    return EngineEntry.from_dict(r)


def test_engine_mismatch_names_what_differs():
    assert tr.engine_mismatch(_record(), GPU, "10.9.0") is None
    why = tr.engine_mismatch(_record(), GPU, "11.1.0")
    assert "TensorRT 10.9.0" in why and "11.1.0" in why
    why = tr.engine_mismatch(_record(), tr.GpuInfo("NVIDIA L4", "8.9"), "10.9.0")
    assert "built for NVIDIA H100" in why and "NVIDIA L4 (sm 8.9)" in why
    why = tr.engine_mismatch(_record(compute_capability="8.0"), GPU, "10.9.0")
    assert why is not None


def test_select_engine_picks_the_matching_record_or_refuses():
    other = _record(gpu_name="NVIDIA A100", compute_capability="8.0", file="engines/a.plan")
    manifest = SimpleNamespace(engines=(other, _record()))
    assert tr.select_engine(manifest, "oracle", GPU, "10.9.0").file == "engines/o.plan"
    with pytest.raises(StagedxError, match="rebuild with `stagedx build-engine"):
        tr.select_engine(SimpleNamespace(engines=(other,)), "oracle", GPU, "10.9.0")
    with pytest.raises(StagedxError, match="no TensorRT engine for the draft"):
        tr.select_engine(manifest, "draft", GPU, "10.9.0")


def test_missing_tensorrt_is_one_clear_line(monkeypatch):
    monkeypatch.setitem(__import__("sys").modules, "tensorrt", None)
    with pytest.raises(StagedxError) as info:
        tr.TrtRunner("nowhere", "oracle")
    msg = str(info.value)
    assert "TensorRT" in msg and "pip install 'stagedx[trt]'" in msg and "\n" not in msg


# -- a contract graph and the stand-in ------------------------------------------------------------
def _contract_graph(entry: ModelEntry, seed: int = 0) -> bytes:
    """A one-attention-per-layer model following the graph contract (opset 18)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    a = entry.arch
    h, d, c, v = a.n_kv_heads, a.head_dim, a.hidden, a.vocab_size
    rng = np.random.default_rng(seed)
    inits = [
        numpy_helper.from_array(x.astype(np.float32), n)
        for n, x in (
            ("wte", rng.normal(size=(v, c))),
            ("wpe", rng.normal(size=(a.max_positions, c))),
            ("wout", rng.normal(size=(c, v))),
            ("neg", np.array(-1e9)),
            ("scale", np.array(d**-0.5)),
        )
    ]
    inits += [
        numpy_helper.from_array(np.array(s, dtype=np.int64), n)
        for n, s in (("shp_thd", [-1, h, d]), ("shp_tc", [-1, c]), ("k", [entry.topk]))
    ]
    nodes = [
        helper.make_node("Gather", ["wte", "input_ids"], ["te"]),
        helper.make_node("Gather", ["wpe", "position_ids"], ["pe"]),
        helper.make_node("Add", ["te", "pe"], ["x0"]),
    ]
    ins = [
        helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["T"]),
        helper.make_tensor_value_info("position_ids", TensorProto.INT64, ["T"]),
        helper.make_tensor_value_info("tree_mask", TensorProto.BOOL, ["T", "PT"]),
    ]
    outs = []
    x = "x0"
    for i in range(a.n_layers):
        for w in ("q", "k", "v"):
            inits.append(numpy_helper.from_array(rng.normal(size=(c, c)).astype(np.float32) * 0.3, f"w{w}{i}"))
            nodes.append(helper.make_node("MatMul", [x, f"w{w}{i}"], [f"{w}{i}flat"]))
            nodes.append(helper.make_node("Reshape", [f"{w}{i}flat", "shp_thd"], [f"{w}{i}"]))
        nodes += [
            helper.make_node("Identity", [f"k{i}"], [f"new_key.{i}"]),
            helper.make_node("Identity", [f"v{i}"], [f"new_value.{i}"]),
            helper.make_node("Concat", [f"past_key.{i}", f"k{i}"], [f"K{i}"], axis=0),
            helper.make_node("Concat", [f"past_value.{i}", f"v{i}"], [f"V{i}"], axis=0),
            helper.make_node("Transpose", [f"q{i}"], [f"qh{i}"], perm=[1, 0, 2]),
            helper.make_node("Transpose", [f"K{i}"], [f"kh{i}"], perm=[1, 2, 0]),
            helper.make_node("Transpose", [f"V{i}"], [f"vh{i}"], perm=[1, 0, 2]),
            helper.make_node("MatMul", [f"qh{i}", f"kh{i}"], [f"s{i}raw"]),
            helper.make_node("Mul", [f"s{i}raw", "scale"], [f"s{i}"]),
            helper.make_node("Where", ["tree_mask", f"s{i}", "neg"], [f"sm{i}"]),
            helper.make_node("Softmax", [f"sm{i}"], [f"p{i}"], axis=-1),
            helper.make_node("MatMul", [f"p{i}", f"vh{i}"], [f"o{i}h"]),
            helper.make_node("Transpose", [f"o{i}h"], [f"o{i}"], perm=[1, 0, 2]),
            helper.make_node("Reshape", [f"o{i}", "shp_tc"], [f"o{i}flat"]),
            helper.make_node("Add", [x, f"o{i}flat"], [f"x{i + 1}"]),
        ]
        x = f"x{i + 1}"
        for kind in ("key", "value"):
            ins.append(helper.make_tensor_value_info(f"past_{kind}.{i}", TensorProto.FLOAT, ["P", h, d]))
            outs.append(helper.make_tensor_value_info(f"new_{kind}.{i}", TensorProto.FLOAT, ["T", h, d]))
    nodes += [
        helper.make_node("MatMul", [x, "wout"], ["logits"]),
        helper.make_node("TopK", ["logits", "k"], ["topk_values", "topk_indices"], axis=-1),
    ]
    outs = [
        helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["T", v]),
        helper.make_tensor_value_info("topk_values", TensorProto.FLOAT, ["T", entry.topk]),
        helper.make_tensor_value_info("topk_indices", TensorProto.INT64, ["T", entry.topk]),
    ] + outs
    graph = helper.make_graph(nodes, "contract", ins, outs, inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model.SerializeToString()


class _StandIn:
    """Stand-in for the tensorrt and cuda-python calls TrtRunner makes (tests only)."""

    def __init__(self, gpu: tr.GpuInfo, version: str, profile: dict):
        self.gpu, self.__version__, self.profile = gpu, version, profile
        self.buffers: dict[int, np.ndarray] = {}
        self.copies: list[tuple[str, int]] = []  # (kind, bytes)
        self.executions: list[dict] = []
        self.cudaError_t = SimpleNamespace(cudaSuccess=0)
        self.cudaMemcpyKind = SimpleNamespace(
            cudaMemcpyHostToDevice="H2D", cudaMemcpyDeviceToHost="D2H", cudaMemcpyDeviceToDevice="D2D"
        )
        self.TensorIOMode = SimpleNamespace(INPUT="in", OUTPUT="out")
        self.Logger = type("Logger", (), {"WARNING": 2, "__init__": lambda s, sev=2: None})

    # cuda-python runtime -----------------------------------------------------------------------
    def cudaGetDeviceCount(self):
        return 0, 1

    def cudaSetDevice(self, i):
        return (0,)

    def cudaGetDeviceProperties(self, i):
        major, minor = self.gpu.compute_capability.split(".")
        return 0, SimpleNamespace(name=self.gpu.name.encode() + b"\0\0", major=int(major), minor=int(minor))

    def cudaStreamCreate(self):
        return 0, 7

    def cudaStreamSynchronize(self, s):
        return (0,)

    def cudaStreamDestroy(self, s):
        return (0,)

    def cudaMalloc(self, n):
        buf = np.full(n, 0xAB, dtype=np.uint8)  # garbage, as fresh device memory is
        self.buffers[buf.ctypes.data] = buf
        return 0, buf.ctypes.data

    def cudaFree(self, p):
        self.buffers.pop(p)
        return (0,)

    def cudaMemset(self, p, value, n):
        self._check_device(p, n)
        ctypes.memset(p, value, n)
        return (0,)

    def cudaMemcpyAsync(self, dst, src, n, kind, stream):
        assert stream == 7
        if kind in ("H2D", "D2D"):
            self._check_device(dst, n)
        if kind in ("D2H", "D2D"):
            self._check_device(src, n)
        if kind == "D2D":
            assert dst + n <= src or src + n <= dst, "overlapping cudaMemcpy"
        ctypes.memmove(dst, src, n)
        self.copies.append((kind, n))
        return (0,)

    def _check_device(self, p, n):
        assert any(b <= p and p + n <= b + a.nbytes for b, a in self.buffers.items()), "not device memory"

    # tensorrt --------------------------------------------------------------------------------
    def Runtime(self, logger):
        return SimpleNamespace(deserialize_cuda_engine=lambda data: _Engine(self, data))


class _Engine:
    def __init__(self, api: _StandIn, data: bytes):
        import onnxruntime as ort

        self.api = api
        self.sess = ort.InferenceSession(data, providers=["CPUExecutionProvider"])
        self.inputs = {i.name: i for i in self.sess.get_inputs()}
        self.outputs = [o.name for o in self.sess.get_outputs()]
        self.names = list(self.inputs) + self.outputs
        self.num_io_tensors = len(self.names)

    def get_tensor_name(self, i):
        return self.names[i]

    def create_execution_context(self):
        return _Context(self)


class _Context:
    DTYPES = {"tensor(int64)": np.int64, "tensor(float)": np.float32, "tensor(bool)": np.bool_}

    def __init__(self, engine: _Engine):
        self.engine, self.shapes, self.addr = engine, {}, {}

    def set_input_shape(self, name, shape):
        r = self.engine.api.profile.get(name)
        if r is None or not all(a <= s <= b for s, a, b in zip(shape, r["min"], r["max"])):
            return False
        self.shapes[name] = tuple(shape)
        return True

    def set_tensor_address(self, name, addr):
        self.addr[name] = int(addr)
        return True

    def _read(self, name):
        dtype = np.dtype(self.DTYPES[self.engine.inputs[name].type])
        shape = self.shapes[name]
        n = int(np.prod(shape)) * dtype.itemsize
        self.engine.api._check_device(self.addr[name], n)
        raw = (ctypes.c_uint8 * n).from_address(self.addr[name])
        return np.frombuffer(bytes(raw), dtype=dtype).reshape(shape)

    def execute_async_v3(self, stream):
        assert stream == 7
        feeds = {name: self._read(name) for name in self.engine.inputs}
        mask = feeds["tree_mask"]
        assert mask.shape[1] == feeds["past_key.0"].shape[0] + mask.shape[0], "tree_mask != [T, P+T]"
        outs = self.engine.sess.run(self.engine.outputs, feeds)
        for name, arr in zip(self.engine.outputs, outs):
            arr = np.ascontiguousarray(arr)
            self.engine.api._check_device(self.addr[name], arr.nbytes)
            ctypes.memmove(self.addr[name], arr.ctypes.data, arr.nbytes)
        self.engine.api.executions.append({k: v.shape for k, v in feeds.items()})
        return True


# -- the runner against the stand-in ----------------------------------------------------------------
MAX_TREE, MAX_CTX = 4, 24


@pytest.fixture
def setup(tmp_path, monkeypatch):
    from stagedx.engines.profiles import ProfileSpec, profile_shapes, shapes_as_dict
    from stagedx.manifest import Draft2Entry, Manifest, TokenizerEntry

    entry = _entry(n_layers=2, heads=2, head_dim=4, vocab=13, topk=3)
    model = _contract_graph(entry)
    (tmp_path / "engines").mkdir()
    (tmp_path / "engines" / "draft.plan").write_bytes(model)  # the stand-in "deserializes" ONNX
    profile = shapes_as_dict(profile_shapes(entry, ProfileSpec(MAX_TREE, MAX_CTX, 1)))
    record = _record(
        role="draft", file="engines/draft.plan", max_tree=MAX_TREE, max_context=MAX_CTX, profiles=[profile]
    )
    manifest = Manifest(
        tokenizer=TokenizerEntry("tokenizer.json", "0", 0, 0, 13),
        models={"oracle": entry, "draft": entry},
        draft2=Draft2Entry("none"),
        engines=(record,),
    )
    api = _StandIn(GPU, "10.9.0", profile)
    monkeypatch.setattr(tr, "_import_api", lambda what: (api, api))
    import onnxruntime as ort

    sess = ort.InferenceSession(model, providers=["CPUExecutionProvider"])
    return SimpleNamespace(entry=entry, manifest=manifest, api=api, bundle=tmp_path, sess=sess)


def _recompute(s, tokens, positions, mask):
    """Logits for the last len(mask) tokens computed from scratch (empty past)."""
    e = s.entry
    n = len(tokens)
    full = np.zeros((n, n), dtype=bool)
    k = len(mask)
    full[:, : n - k] = np.tril(np.ones((n, n - k), dtype=bool))
    full[n - k :, n - k :] = mask
    feeds = {
        "input_ids": np.asarray(tokens, np.int64),
        "position_ids": np.asarray(positions, np.int64),
        "tree_mask": full,
    }
    for i in range(e.arch.n_layers):
        for kind in ("past_key", "past_value"):
            feeds[f"{kind}.{i}"] = np.zeros((0, e.arch.n_kv_heads, e.arch.head_dim), np.float32)
    return s.sess.run(["logits"], feeds)[0][n - k :]


def test_runner_matches_recomputation_through_prefill_tree_commit_and_truncate(setup):
    s = setup
    runner = tr.TrtRunner(s.bundle, "draft", manifest=s.manifest)
    assert (runner.backend, runner.device, runner.max_context, runner.length) == ("tensorrt", "cuda:0", MAX_CTX, 0)
    prompt = [3, 1, 4, 1, 5, 9, 2, 6, 5, 3]

    out = runner.run(np.array(prompt), np.arange(10), chain_mask(10), fetch=("topk", "logits"))
    assert len(s.api.executions) == 3  # chunks of 4, 4, 2 tokens
    assert [e["past_key.0"][0] for e in s.api.executions] == [1, 5, 9]  # dummy row + earlier chunks
    ref = _recompute(s, prompt, range(10), chain_mask(10))
    np.testing.assert_allclose(out.logits, ref, rtol=1e-5, atol=1e-4)
    np.testing.assert_allclose(out.topk_values, -np.sort(-ref, axis=1)[:, :3], rtol=1e-5, atol=1e-4)
    np.testing.assert_array_equal(out.topk_indices, np.argsort(-ref, axis=1, kind="stable")[:, :3])

    s.api.copies.clear()
    runner.commit(list(range(10)))
    assert runner.length == 10 and s.api.copies == []  # a prefill is committed in place

    tree = np.array([[1, 0, 0, 0], [1, 1, 0, 0], [1, 0, 1, 0], [1, 0, 1, 1]], dtype=bool)
    toks, pos = np.array([7, 8, 2, 11]), np.array([10, 11, 11, 12])
    s.api.copies.clear()
    out = runner.run(toks, pos, tree)
    assert out.logits is None
    v_bytes = 4 * 13 * 4
    assert ("D2H", v_bytes) not in s.api.copies  # logits stay on the device unless asked
    assert sum(n for kind, n in s.api.copies if kind == "D2H") == 4 * 3 * (4 + 8)  # top-k only
    for row, path in ((1, [0, 1]), (3, [0, 2, 3])):
        ref = _recompute(s, prompt + list(toks[path]), list(range(10)) + list(pos[path]), chain_mask(len(path)))
        got = runner.run(toks, pos, tree, fetch=("logits",)).logits
        np.testing.assert_allclose(got[row], ref[-1], rtol=1e-5, atol=1e-4)

    s.api.copies.clear()
    runner.commit([0, 2, 3])  # rows 2, 3 move down by one: 2 disjoint pieces x 2 layers x K,V
    assert runner.length == 13
    assert s.api.copies == [("D2D", 2 * 4 * 4)] * 8
    out = runner.run(np.array([5]), np.array([13]), chain_mask(1), fetch=("logits",))
    ref = _recompute(s, prompt + [7, 2, 11, 5], range(14), chain_mask(1))
    np.testing.assert_allclose(out.logits, ref, rtol=1e-5, atol=1e-4)

    runner.truncate(11)
    out = runner.run(np.array([4, 4]), np.array([11, 12]), chain_mask(2), fetch=("logits",))
    ref = _recompute(s, prompt + [7, 4, 4], range(13), chain_mask(2))
    np.testing.assert_allclose(out.logits, ref, rtol=1e-5, atol=1e-4)
    runner.close()
    assert s.api.buffers == {}


def test_runner_guards_context_commit_and_truncate(setup):
    runner = tr.TrtRunner(setup.bundle, "draft", manifest=setup.manifest, max_context=8)
    assert runner.max_context == 8
    with pytest.raises(ContractError, match="needs a run"):
        runner.commit([0])
    with pytest.raises(ContractError, match="exceeds"):
        runner.run(np.arange(9), np.arange(9), chain_mask(9))
    runner.run(np.arange(3), np.arange(3), chain_mask(3))
    with pytest.raises(ContractError, match="outside"):
        runner.commit([3])
    runner.commit([0, 1, 2])
    with pytest.raises(ContractError):
        runner.truncate(4)
    with pytest.raises(ContractError, match="disagree"):
        runner.run(np.arange(2), np.arange(3), chain_mask(2))


def test_closed_runners_of_both_backends_raise_the_same_contract_error(setup):
    from stagedx.runtime.backends.ort import OrtRunner

    (setup.bundle / "draft.onnx").write_bytes((setup.bundle / "engines" / "draft.plan").read_bytes())
    runners = (
        tr.TrtRunner(setup.bundle, "draft", manifest=setup.manifest),
        OrtRunner(setup.bundle, setup.entry, device="cpu", threads=1),
    )
    for runner in runners:
        runner.run(np.arange(3), np.arange(3), chain_mask(3))
        runner.close()
        runner.close()  # idempotent
        for call in (
            lambda r=runner: r.run(np.arange(1), np.arange(1), chain_mask(1)),
            lambda r=runner: r.commit([0]),
            lambda r=runner: r.truncate(0),
        ):
            with pytest.raises(ContractError, match="closed"):
                call()


def test_runner_refuses_an_engine_for_another_gpu(setup, monkeypatch):
    api = _StandIn(tr.GpuInfo("NVIDIA L4", "8.9"), "10.9.0", {})
    monkeypatch.setattr(tr, "_import_api", lambda what: (api, api))
    with pytest.raises(StagedxError, match="built for NVIDIA H100.*this machine has NVIDIA L4"):
        tr.TrtRunner(setup.bundle, "draft", manifest=setup.manifest)


def test_runner_refuses_an_engine_whose_io_breaks_the_contract(setup):
    import onnx

    model = onnx.load_from_string((setup.bundle / "engines" / "draft.plan").read_bytes())
    model.graph.output[0].name = "scores"
    model.graph.node[-2].output[0] = "scores"
    model.graph.node[-1].input[0] = "scores"
    (setup.bundle / "engines" / "draft.plan").write_bytes(model.SerializeToString())
    with pytest.raises(StagedxError, match="does not match the graph contract.*logits"):
        tr.TrtRunner(setup.bundle, "draft", manifest=setup.manifest)


@pytest.mark.gpu
def test_cuda_buffers_round_trip_on_a_real_gpu():
    """Device allocation, H2D / D2D / D2H copies as the runner issues them (cuda-python)."""
    try:
        cudart = tr.import_cudart("this test")
        tr.gpu_info(cudart)
    except StagedxError as exc:
        pytest.skip(f"no CUDA GPU / cuda-python here: {str(exc).split(';')[0]}")
    ok = cudart.cudaError_t.cudaSuccess
    stream = tr.cuda_check(cudart, cudart.cudaStreamCreate(), "stream")
    rows, row_bytes = 12, 64
    host = np.arange(rows * row_bytes // 4, dtype=np.float32)
    dev = tr.cuda_check(cudart, cudart.cudaMalloc(host.nbytes), "malloc")
    K = cudart.cudaMemcpyKind
    assert cudart.cudaMemcpyAsync(dev, host.ctypes.data, host.nbytes, K.cudaMemcpyHostToDevice, stream)[0] == ok
    for run in tr.plan_commit([0, 3, 4, 5, 9], 2, 10):
        assert (
            cudart.cudaMemcpyAsync(
                int(dev) + run.dst * row_bytes,
                int(dev) + run.src * row_bytes,
                run.n * row_bytes,
                K.cudaMemcpyDeviceToDevice,
                stream,
            )[0]
            == ok
        )
    back = np.empty_like(host)
    assert cudart.cudaMemcpyAsync(back.ctypes.data, dev, back.nbytes, K.cudaMemcpyDeviceToHost, stream)[0] == ok
    assert cudart.cudaStreamSynchronize(stream)[0] == ok
    per_row = row_bytes // 4
    expect = host.reshape(rows, per_row).copy()
    expect[2:7] = host.reshape(rows, per_row)[[2, 5, 6, 7, 11]]
    np.testing.assert_array_equal(back.reshape(rows, per_row), expect)
    cudart.cudaFree(dev)
    cudart.cudaStreamDestroy(stream)


def test_tensorrt_unusable_says_why(setup, monkeypatch):
    assert tr.tensorrt_unusable(setup.manifest, roles=("draft",)) is None
    assert "no TensorRT engine for the oracle" in tr.tensorrt_unusable(setup.manifest)
    monkeypatch.setitem(__import__("sys").modules, "tensorrt", None)
    monkeypatch.setattr(tr, "_import_api", lambda what: (tr.import_tensorrt(what), None))
    assert "needs TensorRT" in tr.tensorrt_unusable(setup.manifest)
