"""Engine-level parity with the reference implementations (goldens in tests/fixtures/golden).

Each golden case was recorded by the official code (llm2vec 0.2.3; the Linq/e5
model-card code) on the tiny checkpoints in tests/fixtures/tiny; see
tests/fixtures/reference/. Here the same texts go through our recipe (token ids
and pooled spans must match exactly), our packed model and our pooling
(cosine >= 0.99999 in float32), as one batch and one by one.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from gigarouter.engine.base import pack
from gigarouter.engine.build import build_model
from gigarouter.engine.onednn import pack_linears, unavailable_reason
from gigarouter.engine.precision import choose_precision, cpu_flags
from gigarouter.engine.sources import ResolvedCheckpoint
from gigarouter.pooling.pooling import pool
from gigarouter.recipes.base import PreparedInput
from gigarouter.recipes.e5 import E5Recipe
from gigarouter.recipes.llm2vec import Llm2VecRecipe

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
TINY = FIXTURES / "tiny"
FP32_COSINE = 0.99999
BF16_COSINE = 0.999     # the bar when transformers itself does better in bf16
# bfloat16-mixed (the CPU default where the CPU multiplies bf16 natively): feed-forward matmuls in
# bf16, the rest float32. The tiny random-weight models have no trained structure to average
# rounding out, so their bar sits below all-MiniLM-L6-v2's 0.99997 (tests/engine/test_bert_parity.py).
MIXED_COSINE = 0.9999
#: the bar of a model loaded with dtype "auto" on this CPU (bfloat16-mixed where it has AMX or
#: AVX-512-BF16, e.g. AMD Zen 4; float32 elsewhere)
AUTO_COSINE = MIXED_COSINE if choose_precision("auto", device_type="cpu", flags=cpu_flags()).mixed else FP32_COSINE

LLM2VEC = ResolvedCheckpoint(base_dir=TINY / "mistral-instruct-v2",
                             adapter_dirs=(TINY / "llm2vec-mntp", TINY / "llm2vec-simcse"),
                             tokenizer_dir=TINY / "llm2vec-mntp", base_name="mistralai/Mistral-7B-Instruct-v0.2")
LINQ = ResolvedCheckpoint(base_dir=TINY / "linq", adapter_dirs=(), tokenizer_dir=TINY / "linq",
                          base_name="Linq-AI-Research/Linq-Embed-Mistral")


def golden(name: str) -> dict:
    return json.loads((FIXTURES / "golden" / f"{name}.json").read_text(encoding="utf-8"))


def cases(name: str) -> list:
    return [pytest.param(c, id=c["name"]) for c in golden(name)["cases"]]


class Served:
    """A recipe plus a built model, embedding the way the engine does (packed, pooled, float32)."""

    def __init__(self, recipe, resolved: ResolvedCheckpoint, dtype: torch.dtype = torch.float32, *,
                 bf16_matmuls: bool = False, onednn: bool = False) -> None:
        self.recipe = recipe
        self.resolved = resolved
        self.model, self.pooling = build_model(resolved, recipe_name=recipe.name, dtype=dtype,
                                               device=torch.device("cpu"), bf16_matmuls=bf16_matmuls)
        if onednn:      # as the server runs it on a CPU (engine/onednn.py)
            pack_linears(self.model)

    def prepare(self, case: dict) -> list[PreparedInput]:
        """Each text with its own instruction: a query when the reference used one, else a document."""
        out = []
        for text, instruction in zip(case["texts"], case["instructions"], strict=True):
            input_type = "query" if instruction is not None and case["input_type"] != "document" else "document"
            out += self.recipe.prepare_texts([text], input_type=input_type, instruction=instruction)
        return out

    def embed(self, prepared: list[PreparedInput]) -> torch.Tensor:
        batch = pack([p.token_ids for p in prepared], [p.pool_start for p in prepared])
        cu = torch.from_numpy(batch.cu_seqlens)
        with torch.inference_mode():
            hidden = self.model(torch.from_numpy(batch.input_ids), cu)
            return pool(hidden, cu, torch.from_numpy(batch.pool_starts), self.pooling)


def cosines(ours: torch.Tensor, reference: list) -> np.ndarray:
    return torch.nn.functional.cosine_similarity(ours, torch.tensor(reference), dim=1).numpy()


@pytest.fixture(scope="module")
def llm2vec() -> Served:
    recipe = Llm2VecRecipe.from_checkpoint(LLM2VEC.tokenizer_dir, base_name=LLM2VEC.base_name)
    return Served(recipe, LLM2VEC)


@pytest.fixture(scope="module")
def linq() -> Served:
    return Served(E5Recipe.from_checkpoint(LINQ.tokenizer_dir), LINQ)


@pytest.mark.parametrize("case", cases("llm2vec"))
def test_llm2vec_matches_the_library(llm2vec, case):
    prepared = llm2vec.prepare(case)
    assert [p.token_ids for p in prepared] == case["token_ids"]
    assert [len(p.token_ids) - p.pool_start for p in prepared] == case["pool_lengths"]
    batch = llm2vec.embed(prepared)
    assert cosines(batch, case["vectors"]).min() >= FP32_COSINE
    one_by_one = torch.cat([llm2vec.embed([p]) for p in prepared])
    assert cosines(one_by_one, case["vectors_one_by_one"]).min() >= FP32_COSINE
    torch.testing.assert_close(batch, one_by_one, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("case", cases("e5"))
def test_linq_matches_the_model_card_code(linq, case):
    prepared = linq.prepare(case)
    assert [p.token_ids for p in prepared] == case["token_ids"]
    assert all(p.token_ids[-1] == linq.recipe.eos_id and p.pool_start == len(p.token_ids) - 1 for p in prepared)
    batch = linq.embed(prepared)
    assert cosines(batch, case["vectors"]).min() >= FP32_COSINE
    torch.testing.assert_close(torch.nn.functional.normalize(batch), torch.tensor(case["vectors"]),
                               rtol=1e-4, atol=1e-5)
    one_by_one = torch.cat([linq.embed([p]) for p in prepared])
    assert cosines(one_by_one, case["vectors_one_by_one"]).min() >= FP32_COSINE
    torch.testing.assert_close(batch, one_by_one, rtol=1e-5, atol=1e-5)


def transformers_bf16(served: Served):
    """Hugging Face's MistralModel in bfloat16 with the same (merged) weights: what bf16 allows."""
    transformers = pytest.importorskip("transformers")
    raw = json.loads((served.resolved.base_dir / "config.json").read_text())
    config = transformers.MistralConfig(**{k: v for k, v in raw.items() if not k.startswith("_")})
    model = transformers.MistralModel(config).eval()
    model.load_state_dict(served.model.state_dict())
    model = model.to(torch.bfloat16)
    causal = served.model.config.causal

    def embed(prepared: list[PreparedInput]) -> torch.Tensor:
        out = []
        for p in prepared:
            ids = torch.tensor([p.token_ids])
            # an additive 4D mask of zeros = no mask at all: the bidirectional LLM2Vec model
            mask = None if causal else torch.zeros(1, 1, ids.shape[1], ids.shape[1], dtype=torch.bfloat16)
            with torch.inference_mode():
                hidden = model(ids, attention_mask=mask).last_hidden_state[0].float()
            out.append(hidden[p.pool_start:].mean(0) if not causal else hidden[-1])
        return torch.stack(out)

    return embed


@pytest.mark.parametrize(("golden_name", "served"), [("llm2vec", "llm2vec"), ("e5", "linq")])
def test_bf16_is_as_close_as_transformers_in_bf16(golden_name, served, request):
    """bfloat16 weights and activations: within 1e-3 cosine of what transformers gets in bf16."""
    fp32: Served = request.getfixturevalue(served)
    low = Served(fp32.recipe, fp32.resolved, dtype=torch.bfloat16)
    theirs = transformers_bf16(fp32)
    for case in golden(golden_name)["cases"]:
        prepared = low.prepare(case)
        ours = cosines(low.embed(prepared), case["vectors"]).min()
        floor = cosines(theirs(prepared), case["vectors"]).min()
        assert ours >= min(floor, BF16_COSINE) - 1e-3, (case["name"], ours, floor)


@pytest.mark.parametrize(("golden_name", "served"), [("llm2vec", "llm2vec"), ("e5", "linq")])
def test_bfloat16_mixed_matches_the_goldens(golden_name, served, request):
    """The CPU default on AMX / AVX-512-BF16 machines: batch and one by one, against the references."""
    fp32: Served = request.getfixturevalue(served)
    mixed = Served(fp32.recipe, fp32.resolved, bf16_matmuls=True)
    for case in golden(golden_name)["cases"]:
        prepared = mixed.prepare(case)
        batch = mixed.embed(prepared)
        assert cosines(batch, case["vectors"]).min() >= MIXED_COSINE, case["name"]
        one_by_one = torch.cat([mixed.embed([p]) for p in prepared])
        assert cosines(one_by_one, case["vectors_one_by_one"]).min() >= MIXED_COSINE, case["name"]
        assert torch.nn.functional.cosine_similarity(batch, one_by_one).min() >= 0.99999, case["name"]


@pytest.mark.parametrize("precision", ["float32", pytest.param("bfloat16-mixed", marks=pytest.mark.skipif(
    unavailable_reason(bf16=True) is not None, reason="this CPU has no oneDNN bf16 GEMM (served on ATen)"))])
@pytest.mark.parametrize(("golden_name", "served"), [("llm2vec", "llm2vec"), ("e5", "linq")])
def test_the_cpu_serving_kernels_match_the_goldens(golden_name, served, precision, request):
    """Linear layers on oneDNN (what a CPU server runs), in each precision that is a CPU default."""
    fp32: Served = request.getfixturevalue(served)
    mixed = precision == "bfloat16-mixed"
    packed = Served(fp32.recipe, fp32.resolved, bf16_matmuls=mixed, onednn=True)
    assert not any(type(m) is torch.nn.Linear for m in packed.model.modules())
    bar = MIXED_COSINE if mixed else FP32_COSINE
    for case in golden(golden_name)["cases"]:
        prepared = packed.prepare(case)
        batch = packed.embed(prepared)
        assert cosines(batch, case["vectors"]).min() >= bar, case["name"]
        one_by_one = torch.cat([packed.embed([p]) for p in prepared])
        assert torch.nn.functional.cosine_similarity(batch, one_by_one).min() >= 0.99999, case["name"]
        if not mixed:    # the same float32 arithmetic as ATen's kernels, to rounding
            torch.testing.assert_close(batch, fp32.embed(prepared), rtol=1e-4, atol=1e-5)
