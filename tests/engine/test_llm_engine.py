"""LLMEngine behaviour: stops, seeds, aborts, bad input (the CLI and Python API alike)."""

import subprocess
import sys

import pytest

from banaserve import LLM, LLMEngine, SamplingParams
from banaserve.engine.config import EngineConfig
from tests.conftest import cuda_devices


@pytest.fixture(scope="module", params=cuda_devices())
def llm(request, tiny_llama):
    return LLM(tiny_llama, dtype="float32", device=request.param)


def test_text_prompts_and_finish_reasons(llm):
    outs = llm.generate(["hello there", "a"], SamplingParams(max_tokens=5, temperature=0, ignore_eos=True))
    assert [len(o.token_ids) for o in outs] == [5, 5]
    assert all(o.finish_reason == "length" for o in outs)
    assert outs[0].text == llm.tokenizer.decode(outs[0].token_ids)


def test_stop_token_ids_and_stop_strings(llm):
    base = llm.generate(["stop test"], SamplingParams(max_tokens=12, temperature=0, ignore_eos=True))[0]
    third = base.token_ids[2]
    out = llm.generate(["stop test"], SamplingParams(max_tokens=12, temperature=0, ignore_eos=True,
                                                      stop_token_ids=[third]))[0]
    assert out.token_ids == base.token_ids[:3] and out.finish_reason == "stop"
    stop = base.text[len(base.text) // 2:len(base.text) // 2 + 2]
    out = llm.generate(["stop test"], SamplingParams(max_tokens=12, temperature=0, ignore_eos=True, stop=[stop]))[0]
    assert out.finish_reason == "stop" and out.text == base.text[:base.text.find(stop)]


def test_eos_stops_unless_ignored(llm):
    eos = llm.engine.model_config.eos_token_ids[0]
    base = llm.generate(prompt_token_ids=[[5, 6, 7]], sampling_params=SamplingParams(max_tokens=6, temperature=0,
                                                                                    ignore_eos=True))[0]
    # make the model's own 2nd greedy token the EOS token by declaring it so (the core's stop rule)
    core = llm.engine.core
    core.eos_token_ids = frozenset([base.token_ids[1]])
    try:
        out = llm.generate(prompt_token_ids=[[5, 6, 7]], sampling_params=SamplingParams(max_tokens=6, temperature=0))[0]
        first = base.token_ids.index(base.token_ids[1])  # it may occur already at position 0
        assert out.token_ids == base.token_ids[:first + 1] and out.finish_reason == "stop"
        out = llm.generate(prompt_token_ids=[[5, 6, 7]],
                           sampling_params=SamplingParams(max_tokens=6, temperature=0, ignore_eos=True))[0]
        assert out.token_ids == base.token_ids
    finally:
        core.eos_token_ids = frozenset([eos])


def test_seeded_sampling_is_batch_independent(llm):
    p = SamplingParams(max_tokens=10, temperature=1.0, top_p=0.9, seed=7, ignore_eos=True)
    alone = llm.generate(["seeded"], p)[0].token_ids
    mixed = llm.generate(["other", "seeded", "x y z"],
                         [SamplingParams(max_tokens=4, temperature=0.5), p, SamplingParams(max_tokens=9)])
    assert mixed[1].token_ids == alone


@pytest.mark.parametrize("device", cuda_devices())
def test_abort_frees_blocks(tiny_llama, device):
    engine = LLMEngine(EngineConfig(model=tiny_llama, device=device))
    engine.add_request("a", prompt_token_ids=list(range(1, 100)), params=SamplingParams(max_tokens=50))
    engine.add_request("b", prompt_token_ids=list(range(1, 40)), params=SamplingParams(max_tokens=50))
    engine.step()
    engine.step()
    assert engine.abort_request("a").finish_reason == "abort"
    assert engine.abort_request("a") is None
    engine.abort_request("b")
    assert not engine.has_unfinished_requests() and engine.blocks.num_used_blocks == 0


@pytest.mark.parametrize("kwargs,match", [
    (dict(prompt=""), "empty"),
    (dict(prompt_token_ids=[]), "empty"),
    (dict(prompt_token_ids=[1] * 5000), "context"),
    (dict(prompt_token_ids=[10**9]), "token ids"),
    (dict(prompt="x", params=SamplingParams.__new__(SamplingParams)), None),
])
def test_bad_requests_raise_value_error(llm, kwargs, match):
    if "params" in kwargs:  # bypass construction-time checks to test add_request's own validation
        p = kwargs["params"]
        for f, v in dict(max_tokens=0, temperature=1.0, top_p=1.0, top_k=0, seed=None, stop=[],
                         stop_token_ids=[], ignore_eos=False).items():
            setattr(p, f, v)
        match = "max_tokens"
    with pytest.raises(ValueError, match=match):
        llm.engine.add_request(**kwargs)
    assert not llm.engine.has_unfinished_requests()


@pytest.mark.parametrize("kwargs,match", [
    (dict(max_tokens=0), "max_tokens"), (dict(max_tokens=-3), "max_tokens"),
    (dict(top_p=0.0), "top_p"), (dict(top_p=1.5), "top_p"),
    (dict(temperature=-1.0), "temperature"), (dict(top_k=-2), "top_k"),
])
def test_bad_sampling_params(kwargs, match):
    with pytest.raises(ValueError, match=match):
        SamplingParams(**kwargs)


def test_unknown_model_path():
    with pytest.raises(ValueError, match="does not exist"):
        LLM("/nonexistent/model/dir")


def test_generate_validates_all_before_running(llm):
    with pytest.raises(ValueError):
        llm.generate(["fine", ""], SamplingParams(max_tokens=2))
    assert not llm.engine.has_unfinished_requests()


@pytest.mark.parametrize("args,match", [
    (["--prompt", ""], "empty"),
    (["--prompt", "x", "--max-tokens", "0"], "max_tokens"),
    (["--prompt", "x", "--top-p", "2"], "top_p"),
    (["--prompt", "x" * 3000], "context"),
    (["--prompt", "x", "--model", "/nonexistent"], "does not exist"),
])
def test_cli_bad_input_exits_2_with_one_line(tiny_llama, args, match):
    if "--model" not in args:
        args = args + ["--model", tiny_llama]
    proc = subprocess.run([sys.executable, "-m", "banaserve", "generate", *args],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and match in lines[0] and "Traceback" not in proc.stderr


def test_cli_generate_prints_completion(tiny_llama):
    proc = subprocess.run([sys.executable, "-m", "banaserve", "generate", "--model", tiny_llama,
                           "--prompt", "hello", "--max-tokens", "8", "--ignore-eos"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    offline = LLM(tiny_llama, device="cpu").generate(["hello"], SamplingParams(max_tokens=8, temperature=0,
                                                                              ignore_eos=True))[0]
    assert proc.stdout == offline.text + "\n"
