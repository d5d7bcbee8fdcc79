"""Token data for training: every kind of source gives the same BOS-first rows; splits and masks."""

from __future__ import annotations

import pytest
import torch

from training.data import (
    DataError,
    chunk_documents,
    iter_documents,
    load_token_data,
    special_token_ids,
    token_mask,
)

CTX = 16

DOCS = [
    "def add(a, b):\n    return a + b\n" * 3,
    "class Point:\n    x: int = 0\n    y: int = 0\n" * 4,
    "import os\nprint(os.getcwd())\n" * 5,
    "for i in range(10):\n    total += i * i\n" * 3,
]


def _expected_rows(model, docs: list[str]) -> torch.Tensor:
    bos, _ = special_token_ids(model)
    ids = [model.tokenizer(d, add_special_tokens=False)["input_ids"] for d in docs]
    return chunk_documents(ids, bos, CTX)


def _all_rows(data) -> set[tuple[int, ...]]:
    return {tuple(r) for r in torch.cat([data.train, data.val]).tolist()}


def test_stream_is_documents_joined_by_bos(tiny_gpt2):
    bos, _ = special_token_ids(tiny_gpt2)
    rows = _expected_rows(tiny_gpt2, DOCS)
    stream = rows[:, 1:].reshape(-1).tolist()
    ids = [tiny_gpt2.tokenizer(d, add_special_tokens=False)["input_ids"] for d in DOCS]
    joined = ids[0] + [bos] + ids[1] + [bos] + ids[2] + [bos] + ids[3]
    assert stream == joined[: len(stream)]  # only the last partial row is dropped
    assert len(joined) - len(stream) < CTX - 1
    assert (rows[:, 0] == bos).all()


def test_every_source_kind_gives_the_same_rows(tiny_gpt2, tmp_path):
    expected = {tuple(r) for r in _expected_rows(tiny_gpt2, DOCS).tolist()}
    # a folder, read recursively in sorted path order; hidden files are skipped
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "b").mkdir()
    for i, (rel, doc) in enumerate(
        zip(["a/0.py", "a/b/1.py", "a/b/2.txt", "c.py"], DOCS, strict=True)
    ):
        (tmp_path / rel).write_text(doc)
        assert i == sorted(["a/0.py", "a/b/1.py", "a/b/2.txt", "c.py"]).index(rel)
    (tmp_path / ".hidden").write_text("SHOULD NOT BE READ " * 50)
    ids = [tiny_gpt2.tokenizer(d, add_special_tokens=False)["input_ids"] for d in DOCS]
    sources = {
        "folder": tmp_path,
        "strings": DOCS,
        "generator": (d for d in DOCS),
        "token lists": ids,
        "1-D tensors": [torch.tensor(t) for t in ids],
    }
    for name, source in sources.items():
        data = load_token_data(tiny_gpt2, source, CTX, val_fraction=0.25)
        assert _all_rows(data) == expected, name
        assert data.train.shape[1] == CTX and data.val.shape[0] >= 1, name
    single = tmp_path / "one.txt"
    single.write_text(DOCS[0])
    data = load_token_data(tiny_gpt2, single, CTX)
    assert _all_rows(data) == {tuple(r) for r in _expected_rows(tiny_gpt2, DOCS[:1]).tolist()}


def test_hugging_face_dataset_text_and_token_columns(tiny_gpt2):
    datasets = pytest.importorskip("datasets")
    expected = {tuple(r) for r in _expected_rows(tiny_gpt2, DOCS).tolist()}
    text = datasets.Dataset.from_dict({"text": DOCS, "id": list(range(len(DOCS)))})
    assert _all_rows(load_token_data(tiny_gpt2, text, CTX)) == expected
    ids = [tiny_gpt2.tokenizer(d, add_special_tokens=False)["input_ids"] for d in DOCS]
    tokens = datasets.Dataset.from_dict({"input_ids": ids})
    assert _all_rows(load_token_data(tiny_gpt2, tokens, CTX)) == expected
    with pytest.raises(DataError, match="columns"):
        list(iter_documents(datasets.Dataset.from_dict({"body": DOCS})))


def test_token_rows_with_bos_are_not_doubled(tiny_gpt2):
    bos, _ = special_token_ids(tiny_gpt2)
    body = torch.randint(1, 300, (12, CTX - 1), generator=torch.Generator().manual_seed(0))
    rows = torch.cat([torch.full((12, 1), bos), body], dim=1)  # BOS-first docs, no inner BOS
    again = load_token_data(tiny_gpt2, rows, CTX, val_fraction=0.25)
    stream = torch.cat([again.train, again.val])
    assert (stream[:, 0] == bos).all()
    # each document's own BOS became the single separator: never two BOS side by side, except
    # a row's own BOS followed by the separator when the row starts at a document boundary
    assert not ((stream[:, 2:] == bos) & (stream[:, 1:-1] == bos)).any()
    # nothing but BOS was added or lost: the non-BOS tokens are the documents' tokens in order
    kept = sorted(map(tuple, stream.tolist()))
    joined = torch.cat([torch.cat([r[1:], torch.tensor([bos])]) for r in rows])[:-1]
    assert kept == sorted(map(tuple, chunk_documents([joined.tolist()], bos, CTX).tolist()))


def test_validation_split_is_deterministic_disjoint_and_seed_independent(tiny_gpt2):
    many = DOCS * 10
    a = load_token_data(tiny_gpt2, many, CTX, val_fraction=0.1)
    b = load_token_data(tiny_gpt2, list(many), CTX, val_fraction=0.1)
    assert torch.equal(a.train, b.train) and torch.equal(a.val, b.val)
    n = a.train.shape[0] + a.val.shape[0]
    assert a.val.shape[0] == round(0.1 * n)
    # rows are compared by position in the stream: the same text may repeat, positions do not
    rows = _expected_rows(tiny_gpt2, many)
    assert rows.shape[0] == n
    as_list = rows.tolist()
    assert sorted(a.train.tolist() + a.val.tolist()) == sorted(as_list)


def test_mask_drops_bos_and_every_special_token():
    rows = torch.tensor([[0, 5, 6, 7, 9], [0, 9, 0, 8, 5]])
    mask = token_mask(rows, [0, 9])
    assert mask.tolist() == [
        [False, True, True, True, False],
        [False, False, False, True, True],
    ]
    # position 0 is masked even when the row does not start with a special token
    assert not token_mask(torch.tensor([[4, 5]]), [0])[0, 0]


def test_bad_sources_raise_clear_errors(tiny_gpt2, tmp_path):
    with pytest.raises(DataError, match="neither a file nor a folder"):
        load_token_data(tiny_gpt2, tmp_path / "missing", CTX)
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no files"):
        load_token_data(tiny_gpt2, tmp_path / "empty", CTX)
    with pytest.raises(DataError, match="at least 2"):
        load_token_data(tiny_gpt2, ["x = 1"], CTX)
    with pytest.raises(DataError, match="1-D or 2-D"):
        load_token_data(tiny_gpt2, torch.zeros(2, 2, 2, dtype=torch.long), CTX)
    with pytest.raises(DataError, match="type"):
        load_token_data(tiny_gpt2, 3.5, CTX)


def test_default_corpus_trains_on_stdlib_and_validates_on_held_out_files(tiny_gpt2, monkeypatch):
    from training.default_model import corpus as corpus_module

    held = ["x = 'held out'\n" * 20]
    fake = corpus_module.Corpus(
        train=[corpus_module.Document(f"m{i}.py", d) for i, d in enumerate(DOCS)],
        heldout=[corpus_module.Document("bisect.py", held[0])],
        stdlib_dir=corpus_module.stdlib_dir(),
    )
    monkeypatch.setattr(corpus_module, "collect_corpus", lambda: fake)
    data = load_token_data(tiny_gpt2, None, CTX)
    assert {tuple(r) for r in data.train.tolist()} == {
        tuple(r) for r in _expected_rows(tiny_gpt2, DOCS).tolist()
    }
    assert torch.equal(data.val, _expected_rows(tiny_gpt2, held))
    # and the real held-out list names files that the real training list leaves out
    heldout = set(corpus_module.heldout_paths())
    assert heldout and not heldout & set(corpus_module.training_file_paths())
