"""UMT-QA: official key layout, strict loading, answer ranking (official rank_answer) and the training loss."""
import math
from dataclasses import replace

import pytest
import torch
import torch.nn.functional as F

from vidtldr_pl.backbones import create_model, list_models
from vidtldr_pl.text import answer_texts
from vidtldr_pl.backbones.umt.qa import UMTQA, load_umt_qa_checkpoint, rerank_topk
from vidtldr_pl.errors import CheckpointError
from vidtldr_pl.merging import MergeSetting, apply_merge
from vidtldr_pl.text import BertWordPieceTokenizer

WORDS = ["what", "is", "the", "man", "doing", "color", "red", "blue", "green", "yes", "no", "dog", "cat", "two",
         "three", "running", "big", "small", "car", "playing", "guitar", "a", "of"]
ANSWERS = ["red", "blue", "green", "yes", "no", "dog", "cat", "two", "three", "running", "big car", "playing guitar",
           "a small dog"]


@pytest.fixture(scope="module")
def tokenizer() -> BertWordPieceTokenizer:
    return BertWordPieceTokenizer(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + WORDS, flavor="umt")


@pytest.fixture(scope="module")
def model() -> UMTQA:
    torch.manual_seed(0)
    m = create_model("umt_qa_tiny").eval()
    # a random BERT init gives near-uniform answers; larger weights make the ranking depend on the question
    with torch.no_grad():
        for name, p in m.named_parameters():
            if p.dim() == 2 and not name.startswith("vision_encoder"):
                p.normal_(0, 0.3)
    return m


def _inputs(model: UMTQA, tokenizer: BertWordPieceTokenizer, n: int = 3):
    g = torch.Generator().manual_seed(1)
    video = torch.randn(n, 4, 3, 64, 64, generator=g)
    q = tokenizer(["what is the man doing", "what color is the car", "is the dog big"][:n], max_length=25)
    a = tokenizer(answer_texts(ANSWERS), max_length=5)
    return video, q, a


def test_presets_registered_with_official_decoder_depth():
    assert {"umt_qa_b16", "umt_qa_l16", "umt_qa_tiny"} <= set(list_models(task="qa"))
    with torch.device("meta"):
        b16, l16 = create_model("umt_qa_b16").cfg, create_model("umt_qa_l16").cfg
    assert b16.num_decoder_layers == 3
    assert l16.num_decoder_layers == 5
    assert l16.text.fusion_layer == 19


def test_state_dict_has_the_official_qa_layout(model: UMTQA):
    keys = set(model.state_dict())
    prefixes = ("vision_encoder.encoder.", "text_encoder.embeddings.", "text_encoder.encoder.layer.",
                "text_decoder.bert.embeddings.", "text_decoder.bert.encoder.layer.", "text_decoder.cls.predictions.")
    assert all(k.startswith(prefixes) for k in keys), sorted(k for k in keys if not k.startswith(prefixes))
    for absent in ("vision_encoder.pool_norm.weight", "vision_proj.weight", "text_proj.weight", "itm_head.weight",
                   "temp"):
        assert absent not in keys
    fusion = model.cfg.text.fusion_layer
    for i in range(model.cfg.text.num_layers):
        assert (f"text_encoder.encoder.layer.{i}.crossattention.self.key.weight" in keys) == (i >= fusion)
    assert {f"text_decoder.bert.encoder.layer.{i}.crossattention.self.key.weight" for i in range(2)} <= keys
    assert "text_decoder.bert.encoder.layer.2.attention.self.query.weight" not in keys  # 4 - 2 decoder layers
    for k in ("bias", "decoder.weight", "decoder.bias", "transform.dense.weight", "transform.LayerNorm.weight"):
        assert f"text_decoder.cls.predictions.{k}" in keys
    # the decoder reads question states: its cross-attention keys take the text width
    assert model.state_dict()["text_decoder.bert.encoder.layer.0.crossattention.self.key.weight"].shape[1] == 64


def _official_file(model: UMTQA, path, extra: dict | None = None, drop: str | None = None) -> None:
    state = {k: v.clone() for k, v in model.state_dict().items() if k != drop}
    state.update(extra or {})
    torch.save({"model": state, "epoch": 3}, path)


def test_official_file_loads_strictly_and_clip_teacher_is_reported(model: UMTQA, tokenizer, tmp_path):
    path = tmp_path / "qa_msrvtt_tiny.pth"
    _official_file(model, path, extra={"clip_teacher.proj": torch.zeros(2, 2), "clip_teacher.ln.weight": torch.ones(2)})
    fresh = create_model("umt_qa_tiny").eval()
    report = load_umt_qa_checkpoint(fresh, str(path), strict=True)
    assert report.ok and report.ignored == ["clip_teacher.ln.weight", "clip_teacher.proj"]
    video, q, a = _inputs(model, tokenizer)
    with torch.no_grad():
        s1 = model.encode_question(model.encode_vision(video)[0], q["input_ids"], q["attention_mask"])
        s2 = fresh.encode_question(fresh.encode_vision(video)[0], q["input_ids"], q["attention_mask"])
    assert torch.equal(s1, s2)
    ids1, p1 = model.rank_answers(s1, q["attention_mask"], a["input_ids"], a["attention_mask"], k=5)
    ids2, p2 = fresh.rank_answers(s2, q["attention_mask"], a["input_ids"], a["attention_mask"], k=5)
    assert torch.equal(ids1, ids2) and torch.equal(p1, p2)
    # the tied LM output weights follow the loaded word embeddings
    assert fresh.text_decoder.cls.predictions.decoder.weight.data_ptr() == \
        fresh.text_decoder.bert.embeddings.word_embeddings.weight.data_ptr()
    assert create_model("umt_qa_tiny", checkpoint=str(path)) is not None  # the registry's loader


def test_strict_load_names_missing_and_unexpected_keys(model: UMTQA, tmp_path):
    missing = tmp_path / "missing.pth"
    _official_file(model, missing, drop="text_decoder.bert.encoder.layer.1.crossattention.self.value.bias")
    with pytest.raises(CheckpointError, match="text_decoder.bert.encoder.layer.1.crossattention.self.value.bias"):
        load_umt_qa_checkpoint(create_model("umt_qa_tiny"), str(missing))
    unexpected = tmp_path / "retrieval_heads.pth"
    _official_file(model, unexpected, extra={"vision_encoder.pool_norm.weight": torch.ones(64)})
    with pytest.raises(CheckpointError, match="unexpected.*vision_encoder.pool_norm.weight"):
        load_umt_qa_checkpoint(create_model("umt_qa_tiny"), str(unexpected))
    report = load_umt_qa_checkpoint(create_model("umt_qa_tiny"), str(unexpected), strict=False)
    assert report.unexpected == ["vision_encoder.pool_norm.weight"]


def _brute_force_scores(model: UMTQA, states, q_mask, a_ids, a_mask):
    """Every answer scored independently of rank_answers: 2 log p(first) + sum of the later tokens' log p."""
    q, n = states.shape[0], a_ids.shape[0]
    scores = torch.empty(q, n)
    for i in range(q):
        logits = model.text_decoder(a_ids, a_mask, states[i:i + 1].expand(n, -1, -1),
                                    q_mask[i:i + 1].expand(n, -1))
        logp = F.log_softmax(logits.float(), dim=-1)
        for j in range(n):
            length = int(a_mask[j].sum())
            tok = [float(logp[j, t - 1, a_ids[j, t]]) for t in range(1, length)]
            scores[i, j] = 2 * tok[0] + sum(tok[1:])
    return scores


def test_ranking_with_k_equal_to_the_list_is_brute_force(model: UMTQA, tokenizer):
    video, q, a = _inputs(model, tokenizer)
    with torch.no_grad():
        states = model.encode_question(model.encode_vision(video)[0], q["input_ids"], q["attention_mask"])
        ids, probs = model.rank_answers(states, q["attention_mask"], a["input_ids"], a["attention_mask"],
                                        k=len(ANSWERS))
        brute = _brute_force_scores(model, states, q["attention_mask"], a["input_ids"], a["attention_mask"])
    expected = torch.softmax(brute, dim=1)
    assert torch.equal(ids[:, 0], brute.argmax(1))
    torch.testing.assert_close(probs, expected.gather(1, ids), rtol=1e-5, atol=1e-6)
    assert torch.equal(ids, expected.argsort(dim=1, descending=True))
    assert len(set(ids[:, 0].tolist())) > 1  # the questions do not all get the same answer


def test_top_k_keeps_the_k_most_probable_first_tokens(model: UMTQA, tokenizer):
    video, q, a = _inputs(model, tokenizer)
    with torch.no_grad():
        states = model.encode_question(model.encode_vision(video)[0], q["input_ids"], q["attention_mask"])
        ids, probs = model.rank_answers(states, q["attention_mask"], a["input_ids"], a["attention_mask"], k=4)
        bos = a["input_ids"][:1, :1].expand(3, 1)
        first = torch.softmax(model.text_decoder(bos, torch.ones_like(bos), states, q["attention_mask"])[:, 0], -1)
        first = first[:, a["input_ids"][:, 1]]
    assert ids.shape == (3, 4)
    torch.testing.assert_close(probs.sum(1), torch.ones(3))
    for i in range(3):
        assert set(ids[i].tolist()) == set(first[i].topk(4).indices.tolist())


def test_first_token_is_counted_twice_hand_example():
    # answer 0: p(first) = 0.5, NLL = 1.0; answer 1: p(first) = 0.25, NLL = 0.5
    # scores: ln 0.5 - 1.0 = -1.693147, ln 0.25 - 0.5 = -1.886294; softmax: 1 / (1 + e^-0.193147) = 0.548137
    probs = rerank_topk(torch.tensor([[0.5, 0.25]]), torch.tensor([[1.0, 0.5]]))
    torch.testing.assert_close(probs, torch.tensor([[0.548137, 0.451863]]), rtol=0, atol=1e-6)
    # NLL includes the first token, so the first token weighs twice: one token answers with p = 0.5 and 0.25 only
    nll = -torch.log(torch.tensor([[0.5, 0.25]]))
    probs = rerank_topk(torch.tensor([[0.5, 0.25]]), nll)
    torch.testing.assert_close(probs, torch.tensor([[0.8, 0.2]]))  # 0.25 : 0.0625, not 0.5 : 0.25


def test_sequence_nll_skips_padding_and_starts_after_bos(model: UMTQA, tokenizer):
    video, q, a = _inputs(model, tokenizer, n=1)
    with torch.no_grad():
        states = model.encode_question(model.encode_vision(video)[0], q["input_ids"], q["attention_mask"])
        ids, mask = a["input_ids"][:2], a["attention_mask"][:2]  # "red [SEP]" -> [CLS] red [SEP] [PAD] [PAD]
        assert mask[0].tolist() == [1, 1, 1, 0, 0]
        nll = model.text_decoder.sequence_nll(ids, mask, states.expand(2, -1, -1), q["attention_mask"].expand(2, -1))
        logp = F.log_softmax(model.text_decoder(ids[:1, :3], mask[:1, :3], states, q["attention_mask"]), -1)
    hand = -(logp[0, 0, ids[0, 1]] + logp[0, 1, ids[0, 2]])
    torch.testing.assert_close(nll[0], hand)


def test_answer_loss_weights_multiple_answers(model: UMTQA, tokenizer):
    video, q, _ = _inputs(model, tokenizer, n=2)
    a = tokenizer(answer_texts(["red", "blue", "yes"]), max_length=5)
    counts, weights = torch.tensor([2, 1]), torch.tensor([0.75, 0.25, 1.0])
    with torch.no_grad():
        states = model.encode_question(model.encode_vision(video)[0], q["input_ids"], q["attention_mask"])
        loss = model.answer_loss(states, q["attention_mask"], a["input_ids"], a["attention_mask"], counts, weights)
        rows = [0, 0, 1]
        nll = model.text_decoder.sequence_nll(a["input_ids"], a["attention_mask"], states[rows],
                                              q["attention_mask"][rows])
    torch.testing.assert_close(loss, (0.75 * nll[0] + 0.25 * nll[1] + nll[2]) / 2)
    assert math.isfinite(float(loss)) and float(loss) > 0


def test_merging_reduces_the_video_tokens_the_question_reads(tokenizer):
    model = create_model("umt_qa_tiny").eval()
    video = torch.randn(1, 4, 3, 64, 64)
    tokens, pooled = model.encode_vision(video)
    assert tokens.shape == (1, 64, 64) and torch.equal(pooled, tokens.mean(dim=1))
    apply_merge(model, MergeSetting(method="vidtldr", r=[8, 8, 0, 0]))
    tokens, _ = model.encode_vision(video)
    assert tokens.shape == (1, 48, 64)
    q = tokenizer(["what is the man doing"], max_length=25)
    assert model.encode_question(tokens, q["input_ids"], q["attention_mask"]).shape == (1, 25, 64)


def test_fine_tuning_start_from_a_umt_pretraining_file(tmp_path):
    """Official setup_model when training: text encoder whole ("bert." removed), decoder = the encoder's embeddings,
    its fusion layers renumbered from 0 and the MLM head; retrieval-only heads dropped and reported."""
    from vidtldr_pl.backbones.umt.qa import init_qa_from_umt
    from vidtldr_pl.tasks.qa import QATask

    umt = create_model("umt_tiny")
    head = create_model("umt_qa_tiny").text_decoder.cls.state_dict()
    state = {}
    for k, v in umt.state_dict().items():
        state[k.replace("text_encoder.", "text_encoder.bert.") if k.startswith("text_encoder.") else k] = v
    state.update({f"text_encoder.cls.{k}": v + 1.0 for k, v in head.items() if k != "predictions.decoder.weight"})
    state["text_encoder.cls.predictions.decoder.weight"] = state["text_encoder.bert.embeddings.word_embeddings.weight"]
    state["clip_teacher.x"] = torch.zeros(1)
    path = tmp_path / "b16_25m_tiny.pth"
    torch.save({"model": state}, path)
    qa = create_model("umt_qa_tiny")
    report = init_qa_from_umt(qa, str(path))
    assert report.ok and {"vision_proj.weight", "itm_head.weight", "temp", "clip_teacher.x",
                          "vision_encoder.pool_norm.weight"} <= set(report.ignored)
    own, src = qa.state_dict(), umt.state_dict()
    assert torch.equal(own["vision_encoder.encoder.blocks.0.attn.qkv.weight"],
                       src["vision_encoder.encoder.blocks.0.attn.qkv.weight"])
    assert torch.equal(own["text_encoder.encoder.layer.3.crossattention.self.key.weight"],
                       src["text_encoder.encoder.layer.3.crossattention.self.key.weight"])
    for dec, enc in ((0, 2), (1, 3)):
        assert torch.equal(own[f"text_decoder.bert.encoder.layer.{dec}.crossattention.self.query.weight"],
                           src[f"text_encoder.encoder.layer.{enc}.crossattention.self.query.weight"])
    assert torch.equal(own["text_decoder.bert.embeddings.word_embeddings.weight"],
                       src["text_encoder.embeddings.word_embeddings.weight"])
    assert torch.equal(own["text_decoder.cls.predictions.bias"], head["predictions.bias"] + 1.0)
    # a retrieval file (no "bert.", no MLM head) loads too; only the LM head stays as initialised
    retrieval = tmp_path / "msrvtt_ret_tiny.pth"
    torch.save(umt.state_dict(), retrieval)
    task = QATask(model="umt_qa_tiny", pretrained=str(retrieval))
    assert torch.equal(task.model.state_dict()["text_decoder.bert.encoder.layer.0.output.dense.weight"],
                       src["text_encoder.encoder.layer.2.output.dense.weight"])
    again = create_model("umt_qa_tiny")
    again.init_from_pretrained(str(retrieval))  # the VideoQAModel method: the same start
    loaded = {k: v for k, v in task.model.state_dict().items() if not k.startswith("text_decoder.cls.")}
    assert all(torch.equal(v, again.state_dict()[k]) for k, v in loaded.items())
    three = UMTQA(replace(create_model("umt_qa_tiny").cfg, decoder_layers=3))  # more decoder layers than fusion layers
    with pytest.raises(CheckpointError, match="text_decoder.bert.encoder.layer.2"):
        init_qa_from_umt(three, str(retrieval))


def test_export_of_a_qa_training_checkpoint_loads_strictly(model: UMTQA, tmp_path):
    """The LM head's weights are tied to the word embeddings (shared storage in a .ckpt): export writes both keys."""
    from vidtldr_pl.export import export

    ckpt = tmp_path / "last.ckpt"
    torch.save({"state_dict": {f"model.{k}": v for k, v in model.state_dict().items()}, "global_step": 1}, ckpt)
    out = export(ckpt, tmp_path / "qa.safetensors")
    fresh = create_model("umt_qa_tiny", checkpoint=str(out))
    for k, v in model.state_dict().items():
        assert torch.equal(fresh.state_dict()[k], v), k
