"""Attention over a bound past, five ways, on ONNX Runtime's CPU EP (2 threads): SmolLM2-135M's
attention shapes (9 query heads over 3 KV heads, head size 64), 30 layers each with its own past,
nothing else in the graph. Median ms per call at T = 1 / 17 new tokens, pasts of 128 / 2048 / 4096.

A: stagedx/export/attention.py (grouped matmul, query heads of a group stacked along the rows)
B: A with the past as the left operand of the score matmul
C: B with the value product transposed too
D: per query head (batch [H_kv, G], the past broadcast over G), past as left operand of scores
E: D with the scores as in A

usage: python attention_variants.py A,B,C,D,E export   (heavy: writes /tmp/lc/micro_*.onnx)
       python attention_variants.py A,B,C,D,E bench    (timed: run under quiet.sh)
"""

import sys
import time
import warnings

import numpy as np
import onnxruntime as ort
import torch

from stagedx.export.attention import attend, attention_bias

OUT = "/tmp/lc"
L, H, HKV, D = 30, 9, 3, 64
G = H // HKV


def attend_b(q, k, v, past, bias, scale):
    """Scores with the past as the left operand (A streamed in place, tiny B packed)."""
    past_k, past_v = past
    bias_past, bias_new = bias
    h, d, hkv = int(q.shape[1]), int(q.shape[2]), int(k.shape[1])
    g = h // hkv
    qg = q.reshape(-1, hkv, g, d).permute(1, 2, 0, 3).reshape(hkv, -1, d)  # [H_kv, G*T, D]
    s_past = (past_k.permute(1, 0, 2) @ qg.transpose(1, 2)).transpose(1, 2) * scale + bias_past  # [H_kv, G*T, P]
    s_new = (qg @ k.permute(1, 2, 0)) * scale + bias_new
    top = torch.maximum(s_past.amax(-1, keepdim=True), s_new.amax(-1, keepdim=True))
    e_past = torch.exp(s_past - top)
    e_new = torch.exp(s_new - top)
    total = e_past.sum(-1, keepdim=True) + e_new.sum(-1, keepdim=True)
    out = e_past @ past_v.transpose(0, 1) + e_new @ v.transpose(0, 1)
    out = (out / total).reshape(hkv, g, -1, d)
    return out.permute(2, 0, 1, 3).reshape(-1, h * d)


def attend_c(q, k, v, past, bias, scale):
    """B, and the values product transposed too: out^T = V^T E^T (past as A, transposed)."""
    past_k, past_v = past
    bias_past, bias_new = bias
    h, d, hkv = int(q.shape[1]), int(q.shape[2]), int(k.shape[1])
    g = h // hkv
    qg = q.reshape(-1, hkv, g, d).permute(1, 2, 0, 3).reshape(hkv, -1, d)
    st = (past_k.permute(1, 0, 2) @ qg.transpose(1, 2)) * scale + bias_past.transpose(0, 1)  # [H_kv, P, G*T]
    s_new = (qg @ k.permute(1, 2, 0)) * scale + bias_new
    top = torch.maximum(st.amax(1, keepdim=True).transpose(1, 2), s_new.amax(-1, keepdim=True))  # [H_kv, G*T, 1]
    et = torch.exp(st - top.transpose(1, 2))  # [H_kv, P, G*T]
    e_new = torch.exp(s_new - top)
    total = et.sum(1, keepdim=True).transpose(1, 2) + e_new.sum(-1, keepdim=True)
    out = (past_v.permute(1, 2, 0) @ et).transpose(1, 2) + e_new @ v.transpose(0, 1)  # [H_kv, G*T, D]
    out = (out / total).reshape(hkv, g, -1, d)
    return out.permute(2, 0, 1, 3).reshape(-1, h * d)


def attend_d(q, k, v, past, bias, scale, scores_as_a=True):
    """Per query head (batch [H_kv, G], the past broadcast over G): at T = 1 every past matmul
    is a matrix-vector product (M = 1 or N = 1), which MLAS runs on the bound past in place."""
    past_k, past_v = past
    bias_past, bias_new = bias
    h, d, hkv = int(q.shape[1]), int(q.shape[2]), int(k.shape[1])
    g = h // hkv
    q4 = q.reshape(-1, hkv, g, d).permute(1, 2, 0, 3)  # [H_kv, G, T, D]
    k4 = past_k.unsqueeze(2).permute(1, 2, 0, 3)  # [H_kv, 1, P, D]
    v4 = past_v.unsqueeze(2).permute(1, 2, 0, 3)  # [H_kv, 1, P, D]
    # [H_kv, G, T, P]
    s4 = (k4 @ q4.transpose(-1, -2)).transpose(-1, -2) if scores_as_a else q4 @ k4.transpose(-1, -2)
    s_past = s4.reshape(hkv, -1, s4.shape[-1]) * scale + bias_past  # [H_kv, G*T, P]
    qg = q4.reshape(hkv, -1, d)
    s_new = (qg @ k.permute(1, 2, 0)) * scale + bias_new
    top = torch.maximum(s_past.amax(-1, keepdim=True), s_new.amax(-1, keepdim=True))
    e_past = torch.exp(s_past - top)
    e_new = torch.exp(s_new - top)
    total = e_past.sum(-1, keepdim=True) + e_new.sum(-1, keepdim=True)
    o_past = (e_past.reshape(hkv, g, -1, e_past.shape[-1]) @ v4).reshape(hkv, -1, d)  # [H_kv, G*T, D]
    out = o_past + e_new @ v.transpose(0, 1)
    out = (out / total).reshape(hkv, g, -1, d)
    return out.permute(2, 0, 1, 3).reshape(-1, h * d)


def attend_e(q, k, v, past, bias, scale):
    return attend_d(q, k, v, past, bias, scale, scores_as_a=False)


VARIANTS = {"A": attend, "B": attend_b, "C": attend_c, "D": attend_d, "E": attend_e}


class Stack(torch.nn.Module):
    def __init__(self, fn):
        super().__init__()
        self.fn = fn

    def forward(self, q, k, v, mask, *past):
        t = mask.shape[0]
        p = mask.shape[1] - t
        bias = attention_bias(mask[:, :p], mask[:, p:], G, torch.float32)
        acc = q.reshape(t, -1)
        for layer in range(L):
            out = self.fn(q + acc.reshape(q.shape) * 0.01, k, v, (past[2 * layer], past[2 * layer + 1]), bias, 0.125)
            acc = acc + out
        return acc


def export(name, path):
    t, p = 3, 5
    args = (
        torch.randn(t, H, D),
        torch.randn(t, HKV, D),
        torch.randn(t, HKV, D),
        torch.ones(t, p + t, dtype=torch.bool),
    )
    past = tuple(torch.randn(p, HKV, D) for _ in range(2 * L))
    names = ["q", "k", "v", "mask"] + [f"past_{i}" for i in range(2 * L)]
    axes = {"q": {0: "T"}, "k": {0: "T"}, "v": {0: "T"}, "mask": {0: "T", 1: "PT"}}
    axes.update({f"past_{i}": {0: "P"} for i in range(2 * L)})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            Stack(VARIANTS[name]),
            args + past,
            path,
            input_names=names,
            output_names=["out"],
            dynamic_axes=axes,
            opset_version=18,
            dynamo=False,
        )


def bench(path, t, p, n=30):
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 2
    opts.inter_op_num_threads = 1
    opts.log_severity_level = 3
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    sess = ort.InferenceSession(path, opts, providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(0)
    mask = np.ones((t, p + t), bool)
    mask[:, p:] = np.tril(mask[:, p:])
    feeds = {
        "q": rng.standard_normal((t, H, D), np.float32),
        "k": rng.standard_normal((t, HKV, D), np.float32),
        "v": rng.standard_normal((t, HKV, D), np.float32),
        "mask": mask,
    }
    for i in range(2 * L):
        feeds[f"past_{i}"] = rng.standard_normal((p, HKV, D), np.float32)
    ref = sess.run(None, feeds)[0]
    best = []
    for _ in range(n):
        t0 = time.perf_counter()
        sess.run(None, feeds)
        best.append(time.perf_counter() - t0)
    return 1e3 * float(np.median(best)), ref


if __name__ == "__main__":
    torch.set_num_threads(1)
    names = sys.argv[1].split(",") if len(sys.argv) > 1 else list(VARIANTS)
    if sys.argv[2] == "export":
        for nm in names:
            export(nm, f"{OUT}/micro_{nm}.onnx")
        sys.exit(0)
    for t in (1, 17):
        for p in (128, 2048, 4096):
            refs = {}
            line = []
            for nm in names:
                ms, refs[nm] = bench(f"{OUT}/micro_{nm}.onnx", t, p)
                line.append(f"{nm} {ms:6.2f}")
            err = max(float(np.abs(refs[nm] - refs[names[0]]).max()) for nm in names)
            print(f"T={t:2d} P={p:5d}: " + "  ".join(line) + f"  (max diff {err:.1e})", flush=True)
