"""Two ``stagedx serve`` replicas behind LiteLLM's Router: one is killed mid-run and every
request is still answered, by the other, with the text it gets when served alone (greedy)."""

from __future__ import annotations

import asyncio
import os
import signal
import time

import pytest

from .conftest import API_KEY, ServerProcess

pytestmark = pytest.mark.slow

PROMPTS = [f"def {name}(x):\n" for name in ("add", "mul", "fib", "sort", "parse", "load")] + [
    f"class {name}:\n" for name in ("Node", "Tree", "Queue", "Stack", "Graph", "Cache")
]
MAX_TOKENS = 24
CONCURRENCY = 3


@pytest.fixture
def replicas(pair_bundle, tmp_path):
    servers = [
        ServerProcess(pair_bundle, "--api-key", API_KEY, "--model-name", "pair", log=tmp_path / f"replica{i}.log")
        for i in range(2)
    ]
    yield servers
    for server in servers:
        server.stop(signal.SIGKILL if server.proc.poll() is None else signal.SIGTERM, timeout=10)


@pytest.fixture
def litellm():
    """Imported when the test runs, not at collection (the import takes seconds), and before
    the replicas start (skipped where it is not installed)."""
    os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")  # no network fetch at import
    return pytest.importorskip("litellm")


def make_router(litellm, servers):
    deployments = [
        {
            "model_name": "pair",
            "litellm_params": {
                "model": "text-completion-openai/pair",  # /v1/completions of an OpenAI-compatible server
                "api_base": server.url + "/v1",
                "api_key": API_KEY,
                "timeout": 60,
            },
        }
        for server in servers
    ]
    return litellm.Router(
        model_list=deployments,
        num_retries=3,  # a refused or dropped connection is retried on another deployment
        retry_after=0,
        allowed_fails=0,  # one failure puts a deployment in cooldown
        cooldown_time=60,
        routing_strategy="simple-shuffle",
    )


def test_a_replica_killed_mid_run_loses_no_request(litellm, replicas, pair_generator):
    router = make_router(litellm, replicas)
    want = {p: pair_generator.generate(p, max_new_tokens=MAX_TOKENS).text for p in PROMPTS}
    victim, survivor = replicas
    done: list = []
    killed = {}

    async def one(prompt: str, gate: asyncio.Semaphore):
        async with gate:
            res = await router.atext_completion(model="pair", prompt=prompt, max_tokens=MAX_TOKENS, temperature=0)
            done.append((prompt, res._hidden_params.get("api_base")))
            return res

    async def assassin():
        """After a few answers, kill the victim (SIGKILL) while it holds a request."""
        while len(done) < CONCURRENCY or "at" not in killed:
            if len(done) >= CONCURRENCY:
                health = await asyncio.to_thread(victim.health)
                if health["busy"]:
                    victim.proc.kill()
                    killed["at"] = len(done)
                    break
            if len(done) == len(PROMPTS):
                break
            await asyncio.sleep(0.01)

    async def main():
        gate = asyncio.Semaphore(CONCURRENCY)
        return await asyncio.gather(*(one(p, gate) for p in PROMPTS), assassin())

    t0 = time.monotonic()
    results = asyncio.run(main())[: len(PROMPTS)]
    elapsed = time.monotonic() - t0
    victim.proc.wait(10)
    assert "at" in killed and killed["at"] < len(PROMPTS), "the victim was never killed with work in flight"
    assert victim.proc.returncode == -signal.SIGKILL
    assert len(results) == len(done) == len(PROMPTS) == len({p for p, _ in done})  # each answered once
    for prompt, res in zip(PROMPTS, results):
        assert res.choices[0].text == want[prompt], prompt  # nothing lost, nothing doubled
    # the victim was busy when killed: that request was answered above, so by the survivor (a retry)
    assert survivor.url + "/v1" in {base for _, base in done}
    assert survivor.health()["status"] == "ok"
    assert elapsed < 120, elapsed
