"""Compression evaluation and the variant manifest: metrics on constructed cases, schema round trips."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from torch import nn
from transformers import AutoModelForCausalLM, AutoTokenizer

from inference.compression.pareto import pareto_front
from inference.compression.quality import (
    build_reference,
    compare_to_reference,
    greedy_agreement,
    mean_kl,
    perplexity,
)
from inference.data import QAItem, load_heldout_text, load_prompts, load_qa
from inference.schema.manifest import (
    ManifestError,
    QualityMetrics,
    SpeedProfile,
    VariantEntry,
    VariantManifest,
)


class RolledLogits(nn.Module):
    """The same model with its logits shifted by one vocabulary slot: every argmax moves."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, **kwargs: torch.Tensor) -> SimpleNamespace:
        return SimpleNamespace(logits=self.inner(**kwargs).logits.roll(1, dims=-1))


@pytest.fixture(scope="module")
def tiny(tiny_model_dir: Path) -> tuple[nn.Module, object]:
    return AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32).eval(), AutoTokenizer.from_pretrained(tiny_model_dir)


def test_identical_model_has_full_agreement_and_zero_kl(tiny) -> None:
    model, tokenizer = tiny
    reference = build_reference(model, tokenizer, load_prompts("eval")[:4], max_new_tokens=6)
    agreement, kl = compare_to_reference(model, reference)
    assert agreement == 1.0
    assert kl == pytest.approx(0.0, abs=1e-6)


def test_model_with_swapped_logits_never_agrees(tiny) -> None:
    model, tokenizer = tiny
    reference = build_reference(model, tokenizer, load_prompts("eval")[:4], max_new_tokens=6)
    agreement, kl = compare_to_reference(RolledLogits(model), reference)
    assert agreement == 0.0
    assert kl > 0.1


def test_metrics_on_constructed_logits() -> None:
    ref = torch.log_softmax(torch.tensor([[3.0, 1.0, 0.0], [0.0, 2.0, 1.0]]), dim=-1)
    assert greedy_agreement(ref, torch.tensor([[1.0, 0.0, 0.0], [0.0, 0.0, 5.0]])) == 0.5
    assert mean_kl(ref, ref.clone()) == pytest.approx(0.0, abs=1e-7)
    uniform = torch.zeros(2, 3)
    expected = float((ref.exp() * (ref - torch.log(torch.tensor(1 / 3)))).sum(-1).mean())
    assert mean_kl(ref, uniform) == pytest.approx(expected, rel=1e-5)


def test_perplexity_of_a_uniform_model_is_the_vocabulary_size(tiny) -> None:
    _, tokenizer = tiny
    vocab = len(tokenizer)

    class Uniform(nn.Module):
        def forward(self, input_ids: torch.Tensor) -> SimpleNamespace:
            return SimpleNamespace(logits=torch.zeros(*input_ids.shape, vocab))

    assert perplexity(Uniform(), tokenizer, load_heldout_text()[:300]) == pytest.approx(vocab, rel=1e-4)


def test_qa_answers_match_whole_words_case_insensitively() -> None:
    item = QAItem("capital", "What is the capital of France?", ("Paris",))
    assert item.is_correct("The capital of France is paris.")
    assert not item.is_correct("Parisian food is good.")
    assert QAItem("arithmetic", "What is 7 + 5?", ("12",)).is_correct("7 + 5 = 12")
    assert not QAItem("arithmetic", "What is 7 + 5?", ("12",)).is_correct("7 + 5 = 120")


def test_shipped_data_sets_have_the_promised_sizes() -> None:
    qa = load_qa()
    assert len(qa) >= 100 and {q.category for q in qa} >= {"capital", "arithmetic", "colour", "opposite"}
    assert len(load_prompts("train")) >= 200 and len(load_prompts("eval")) >= 20
    assert not set(load_prompts("train")) & set(load_prompts("eval"))
    assert len(load_heldout_text().split()) > 500


def _entry(name: str, tok_s: float, accuracy: float) -> VariantEntry:
    return VariantEntry(
        name=name, method="none" if name == "full" else "distill", path=name, params=100, bytes=200,
        quantization="torch-int8" if name != "full" else "none",
        quality=QualityMetrics(agreement=0.9, kl=0.1, task_accuracy=accuracy, ppl=12.0),
        speed=SpeedProfile(tok_s_bs1=tok_s / 4, tok_s_at={"1": tok_s / 4, "32": tok_s},
                           ttft_ms_at={"1": 20.0, "32": 90.0}, tpot_ms_at={"1": 30.0, "32": 60.0}),
        options={"layers_kept": 15},
    )


def test_manifest_round_trips_through_its_schema(tmp_path: Path) -> None:
    manifest = VariantManifest(base="tiny", hardware="cpu-2core-bf16", variants=[_entry("full", 300, 0.6), _entry("distill", 500, 0.5)])
    manifest.save(tmp_path / "variants.json")
    loaded = VariantManifest.load(tmp_path / "variants.json")
    assert loaded == manifest
    assert loaded.resolve_path(loaded.get("distill"), tmp_path / "variants.json") == tmp_path / "distill"


def test_manifest_without_new_fields_still_loads(tmp_path: Path) -> None:
    raw = json.loads(VariantManifest(base="b", hardware="h", variants=[_entry("full", 300, 0.6)]).model_dump_json())
    for key in ("quantization", "resident_bytes"):
        raw["variants"][0].pop(key, None)
    raw["variants"][0]["speed"].pop("ttft_ms_at")
    (tmp_path / "v.json").write_text(json.dumps(raw))
    assert VariantManifest.load(tmp_path / "v.json").variants[0].quantization == "none"


def test_malformed_manifest_fails_naming_the_field(tmp_path: Path) -> None:
    raw = json.loads(VariantManifest(base="b", hardware="h", variants=[_entry("full", 300, 0.6)]).model_dump_json())
    raw["variants"][0]["quality"]["agreement"] = 1.5
    raw["variants"][0]["speed"]["tok_s_at"] = {"many": 3.0}
    (tmp_path / "bad.json").write_text(json.dumps(raw))
    with pytest.raises(ManifestError) as info:
        VariantManifest.load(tmp_path / "bad.json")
    assert "variants.0.quality.agreement" in str(info.value)
    assert "variants.0.speed.tok_s_at" in str(info.value)


def test_pareto_front_keeps_only_undominated_points() -> None:
    points = [(100.0, 0.6), (150.0, 0.55), (120.0, 0.5), (200.0, 0.3), (90.0, 0.6)]
    assert pareto_front(points) == [0, 1, 3]
