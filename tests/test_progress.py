"""Progress lines of long jobs (drdo.progress): when a line is due and what it says, and that
training, generation and scoring write them (the judge's are in test_judge.py). No timing
assertions: the cadence tests drive a fake clock."""

import logging
import re

import pandas as pd
import pytest

from drdo import objectives
from drdo.base_model import tiny_llama, train_tokenizer
from drdo.batching import encode
from drdo.generation import generate
from drdo.modeling import LMWithRewardHead
from drdo.progress import Progress, duration
from drdo.scoring import score, score_pairs
from drdo.trainer import Example, TrainConfig, train

log = logging.getLogger("drdo.test_progress")


class Clock:
    def __init__(self):
        self.t = 0.0

    def __call__(self):
        return self.t


def _lines(caplog, logger):
    return [r.getMessage() for r in caplog.records if r.name == logger]


def test_duration():
    assert [duration(s) for s in (0, 12.4, 65, 3600 + 125)] == ["0s", "12s", "1m05s", "1h02m"]


def test_first_step_every_tenth_and_the_end(caplog):
    clock = Clock()
    p = Progress(log, "job", 100, "steps", clock=clock)
    with caplog.at_level(logging.INFO, logger=log.name):
        logged = []
        for i in range(100):
            clock.t += 0.1  # 10 steps/s: a tenth takes 1 s, never 30
            if p.update():
                logged.append(p.done)
    assert logged == [1, 10, 20, 30, 40, 50, 60, 70, 80, 90, 100]
    lines = _lines(caplog, log.name)
    assert lines[1] == "job: 10/100 steps (10%), 10 steps/s, ETA 9s"
    assert lines[-1] == "job: 100/100 steps (100%), 10 steps/s, took 10s"


def test_slow_job_logs_every_interval_between_tenths(caplog):
    clock = Clock()
    p = Progress(log, "slow", 1000, "batches", interval_s=30.0, clock=clock)
    logged = []
    for _ in range(50):
        clock.t += 7.0  # a tenth (100 batches) would take 700 s
        if p.update():
            logged.append(p.done)
    assert logged == [1, 6, 11, 16, 21, 26, 31, 36, 41, 46]  # the first, then every 35 s (>= 30 s)


def test_counts_rates_detail_and_resume_start(caplog):
    clock = Clock()
    p = Progress(log, "sft", 10, "steps", start=4, counts=("tokens",), clock=clock)
    with caplog.at_level(logging.INFO, logger=log.name):
        clock.t = 2.0
        p.update(1, "loss=1.5", tokens=3000)
    # rates of this process's work only: 1 step and 3,000 tokens in 2 s; 5 steps left
    assert _lines(caplog, log.name) == ["sft: 5/10 steps (50%), 0.5 steps/s, 1,500 tokens/s, ETA 10s; loss=1.5"]


def test_training_logs_loss_tokens_per_second_and_eta(caplog):
    texts = ["POST: my cat sat on the mat\nTL;DR:", "cat on mat", "a thing", "POST: cold pizza\nTL;DR:", "pizza"]
    tok = train_tokenizer(texts, vocab_size=300)
    arch = {"hidden_size": 16, "intermediate_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2,
            "num_key_value_heads": 2, "max_position_embeddings": 64}
    ex = [Example([encode(tok, texts[0], texts[1], 48), encode(tok, texts[0], texts[2], 48)]),
          Example([encode(tok, texts[3], texts[4], 48), encode(tok, texts[3], texts[2], 48)])]
    model = LMWithRewardHead(tiny_llama(tok, arch, seed=0), head_seed=0)
    cfg = TrainConfig(lr=1e-3, batch_size=2, max_steps=20, seed=0)
    with caplog.at_level(logging.INFO, logger="drdo.train"):
        train(model, ex, objectives.build("oracle", {"nll_weight": 0.01}), cfg, tok.pad_token_id)
    lines = [m for m in _lines(caplog, "drdo.train") if re.match(r"oracle: \d+/20 steps", m)]
    assert lines[0].startswith("oracle: 1/20 steps (5%)") and lines[-1].startswith("oracle: 20/20 steps (100%)")
    done = {int(re.match(r"oracle: (\d+)/", m).group(1)) for m in lines}
    assert done >= {1, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20}  # the first step and every tenth (2 steps)
    for line in lines:
        assert " tokens/s, " in line and " loss=" in line and " reward_acc=" in line
        assert ", ETA " in line or ", took " in line


@pytest.fixture(scope="module")
def tiny():
    texts = ["POST: my cat sat on the mat\nTL;DR:", " cat on mat", "POST: cold pizza again\nTL;DR:", " pizza"]
    tok = train_tokenizer(texts, vocab_size=300)
    arch = {"hidden_size": 16, "intermediate_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2,
            "num_key_value_heads": 2, "max_position_embeddings": 128}
    return tok, tiny_llama(tok, arch, seed=0).eval(), texts


def test_generation_logs_batches_done(tiny, caplog):
    tok, model, texts = tiny
    prompts = pd.DataFrame({"eval_set": "tldr", "prompt_id": [f"p{i}" for i in range(6)],
                            "prompt": [texts[0], texts[2]] * 3})
    with caplog.at_level(logging.INFO, logger="drdo.generate"):
        generate(model, tok, prompts, [0.5, 0.9], 0.9, 4, 64, batch_size=4, seed=0)
    lines = _lines(caplog, "drdo.generate")
    # 4 rows a batch = 2 prompts x 2 temperatures: 3 batches, each a tenth or more of the work
    assert [line.split(",")[0] for line in lines] == ["generate: 1/3 batches (33%)", "generate: 2/3 batches (67%)",
                                                       "generate: 3/3 batches (100%)"]
    assert all(" responses/s" in line for line in lines)


def test_scoring_and_tables_log_batches_done(tiny, caplog):
    tok, model, texts = tiny
    head = LMWithRewardHead(model, head_seed=0).eval()
    with caplog.at_level(logging.INFO, logger="drdo.score"):
        score(head, tok, [texts[0], texts[2], texts[0]], [texts[1], texts[3], texts[3]], 64, batch_size=2, logps=False)
        score_pairs(head, tok, [texts[0], texts[2]], [texts[1], texts[3]], [texts[3], texts[1]], 64, batch_size=2)
    lines = _lines(caplog, "drdo.score")
    assert any(line.startswith("score: ") and "(100%)" in line and " sequences/s" in line for line in lines)
    assert any(line.startswith("score pairs: 2/2 batches (100%)") for line in lines)
