"""Tests of diffusion_lm.data: tfds builders, tokenizer, encoding and batching."""

from __future__ import annotations

import csv
import hashlib
import lzma
import os
import pathlib
import re
import sys
import zipfile

import ml_collections
import numpy as np
import pytest

from diffusion_lm.data import batching, datasets
from diffusion_lm.data.datasets import DataError, load_texts
from diffusion_lm.data.tokenizer import Tokenizer, UnencodableTextError, normalize_words

SHARED_DATA_README = pathlib.Path(__file__).resolve().parents[2] / "shared" / "data" / "README.md"
E2E_ROW_COUNTS = {"train": 42_061, "validation": 4_672, "test": 4_693}


def data_config(**overrides) -> ml_collections.ConfigDict:
  fields = dict(
      name="e2e",
      tfds_data_dir="",
      e2e_source="bundled",
      text_field="ref",
      train_files="",
      validation_files="",
      test_files="",
  )
  fields.update(overrides)
  return ml_collections.ConfigDict(fields)


@pytest.fixture(scope="session")
def tfds_dir(tmp_path_factory) -> str:
  return str(tmp_path_factory.mktemp("tfds"))


@pytest.fixture(scope="session")
def e2e_texts(tfds_dir) -> dict[str, list[str]]:
  """All three E2E splits, built once per session (the first build takes seconds)."""
  config = data_config(tfds_data_dir=tfds_dir)
  return {split: load_texts(config, split) for split in E2E_ROW_COUNTS}


@pytest.fixture(scope="session")
def word_tokenizer(e2e_texts, tmp_path_factory) -> Tokenizer:
  prefix = tmp_path_factory.mktemp("tokenizer") / "word"
  return Tokenizer.train(e2e_texts["validation"], str(prefix), "word", vocab_size=100_000)


# --- E2E ---------------------------------------------------------------------------------


def test_e2e_split_row_counts(e2e_texts):
  assert {split: len(texts) for split, texts in e2e_texts.items()} == E2E_ROW_COUNTS
  assert "tensorflow" not in sys.modules


def test_e2e_rows_keep_file_order_and_quoted_newlines(e2e_texts):
  with lzma.open(datasets._BUNDLED_E2E_DIR / "devset.csv.xz", "rt", newline="") as dev_file:
    assert [row["ref"] for row in csv.DictReader(dev_file)] == e2e_texts["validation"]
  assert sum("\n" in ref for ref in e2e_texts["train"]) == 2  # the two multi-line refs
  assert e2e_texts["train"][0].startswith("The Vaults pub near Café Adriatic")


def test_e2e_mr_field(tfds_dir, e2e_texts):
  mrs = load_texts(data_config(tfds_data_dir=tfds_dir, text_field="mr"), "test")
  assert len(mrs) == E2E_ROW_COUNTS["test"]
  assert mrs[0].startswith("name[")


@pytest.mark.skipif(not SHARED_DATA_README.exists(), reason="needs ../shared/data (not in CI)")
def test_bundled_e2e_files_match_published_sha256():
  readme = SHARED_DATA_README.read_text(encoding="utf-8")
  for file_name in ("trainset.csv", "devset.csv", "testset_w_refs.csv"):
    published = re.search(rf"^\| {re.escape(file_name)} \|.*`([0-9a-f]{{64}})` \|$", readme, re.M)
    bundled = datasets._BUNDLED_E2E_DIR / f"{file_name}.xz"
    assert hashlib.sha256(lzma.decompress(bundled.read_bytes())).hexdigest() == published[1]


def test_official_e2e_zip_is_checked_and_read_by_base_name(tmp_path):
  zip_path = tmp_path / "e2e-dataset.zip"
  with zipfile.ZipFile(zip_path, "w") as archive:
    archive.writestr("e2e-dataset/devset.csv", 'mr,ref\r\n"name[A]","A, ok."\r\n')
  with pytest.raises(DataError, match="sha256"):
    datasets._official_e2e_opener(zip_path)
  digest = hashlib.sha256(zip_path.read_bytes()).hexdigest()
  with datasets._official_e2e_opener(zip_path, digest)("devset.csv") as dev_file:
    assert list(csv.DictReader(dev_file)) == [{"mr": "name[A]", "ref": "A, ok."}]


# --- text files --------------------------------------------------------------------------


def test_text_files_splits_and_blank_lines(tmp_path, tfds_dir):
  (tmp_path / "a.txt").write_text("first line\n\n  second line \r\n", encoding="utf-8")
  (tmp_path / "b.txt").write_text("third £ line\n", encoding="utf-8")
  config = data_config(
      name="text_files",
      tfds_data_dir=tfds_dir,
      train_files=f"{tmp_path / 'a.txt'}, {tmp_path / 'b.txt'}",
      test_files=str(tmp_path / "b.txt"),
  )
  assert load_texts(config, "train") == ["first line", "second line", "third £ line"]
  assert load_texts(config, "test") == ["third £ line"]
  with pytest.raises(DataError, match="validation_files"):
    load_texts(config, "validation")


def test_text_files_changed_file_gets_a_new_config(tmp_path, tfds_dir):
  corpus = tmp_path / "corpus.txt"
  corpus.write_text("old\n", encoding="utf-8")
  config = data_config(name="text_files", tfds_data_dir=tfds_dir, train_files=str(corpus))
  assert load_texts(config, "train") == ["old"]
  corpus.write_text("new text\n", encoding="utf-8")
  assert load_texts(config, "train") == ["new text"]


def test_text_files_non_utf8_names_file_and_line(tmp_path, tfds_dir):
  bad = tmp_path / "latin1.txt"
  bad.write_bytes("fine\ncaf\xe9\n".encode("latin-1"))
  config = data_config(name="text_files", tfds_data_dir=tfds_dir, train_files=str(bad))
  with pytest.raises(DataError, match=r"latin1\.txt, line 2"):
    load_texts(config, "train")


@pytest.mark.parametrize("content", [None, "", "\n \n"], ids=["missing", "empty", "blank"])
def test_text_files_missing_or_empty_file(tmp_path, tfds_dir, content):
  path = tmp_path / "corpus.txt"
  if content is not None:
    path.write_text(content, encoding="utf-8")
  config = data_config(name="text_files", tfds_data_dir=tfds_dir, train_files=str(path))
  with pytest.raises(DataError, match=r"corpus\.txt.*train_files"):
    load_texts(config, "train")


@pytest.mark.parametrize(
    "overrides, split",
    [({
        "name": "wiki"
    }, "train"), ({}, "dev"), ({
        "name": "text_files"
    }, "train")],
    ids=["unknown-name", "unknown-split", "no-files"],
)
def test_load_texts_config_errors(overrides, split):
  with pytest.raises(DataError):
    load_texts(data_config(**overrides), split)


# --- tokenizer ---------------------------------------------------------------------------


def test_normalize_words():
  assert normalize_words("Near the riverside, prices £20-25.") == (
      "Near the riverside , prices £ 20 - 25 .")
  assert normalize_words("It's family-friendly.  <unk> 3.5 stars, 'Eagle' company 's") == (
      "It's family-friendly . <unk> 3.5 stars , ' Eagle ' company 's")


def test_word_tokenizer_round_trip_and_special_ids(word_tokenizer, e2e_texts):
  tok = word_tokenizer
  assert (tok.pad_id, tok.eos_id, tok.bos_id, tok.unk_id) == (0, 1, 2, 3)
  assert tok.model_file.endswith("word.model") and os.path.exists(tok.model_file)
  for text in e2e_texts["validation"][:200]:
    ids = tok.encode(text)
    assert tok.unk_id not in ids
    assert tok.decode(ids) == normalize_words(text)
  ids = tok.encode(e2e_texts["validation"][0])
  assert tok.decode([tok.bos_id, *ids, tok.eos_id, 5, 6, tok.pad_id]) == tok.decode(ids)
  assert tok.piece_to_id(tok.id_to_piece(10)) == 10
  assert Tokenizer.load(tok.model_file).encode("The pub.") == tok.encode("The pub.")


def test_word_tokenizer_unknown_words(word_tokenizer):
  tok = word_tokenizer
  ids = tok.encode("The Zyzzyva Qwxq pub")
  assert ids[1:3] == [tok.unk_id, tok.unk_id]  # one unk per word: lengths are preserved
  assert tok.decode(ids) == "The <unk> <unk> pub"
  with pytest.raises(UnencodableTextError, match=r"'Zyzzyva', 'Qwxq'") as error:
    tok.encode_strict("The Zyzzyva Qwxq pub")
  assert tok.model_file in str(error.value)
  assert tok.encode_strict("The pub") == tok.encode("The pub")


def test_literal_unk_in_text_is_the_unk_id(tmp_path):
  tok = Tokenizer.train(["a <unk> b", "b <unk> c ."], str(tmp_path / "ptb"), "word", 100)
  assert tok.encode("c <unk> a") == [tok.piece_to_id("▁c"), tok.unk_id, tok.piece_to_id("▁a")]
  assert tok.decode(tok.encode("a <unk> b .")) == "a <unk> b ."


def test_word_vocab_size_is_an_upper_bound(e2e_texts, tmp_path):
  small = Tokenizer.train(e2e_texts["test"], str(tmp_path / "small"), "word", vocab_size=50)
  assert small.vocab_size == 50
  assert small.unk_id in small.encode(e2e_texts["test"][0])


@pytest.mark.parametrize("model_type", ["word", "unigram", "bpe"])
def test_tokenizer_training_is_deterministic(model_type, e2e_texts, tmp_path):
  texts = e2e_texts["test"][:1500]
  first = Tokenizer.train(texts, str(tmp_path / "a" / "tok"), model_type, vocab_size=400)
  second = Tokenizer.train(texts, str(tmp_path / "b" / "tok"), model_type, vocab_size=400)
  assert pathlib.Path(first.model_file).read_bytes() == pathlib.Path(second.model_file).read_bytes()
  assert first.pad_id == 0
  if model_type != "word":
    text = "The Eagle is a pub near the river."
    assert first.decode(first.encode(text) + [first.eos_id]) == text


# --- encoding and batching ---------------------------------------------------------------


def test_encode_corpus_pad(word_tokenizer):
  tok = word_tokenizer
  texts = ["The pub .", "The pub is near the river in the city centre ."]
  rows = batching.encode_corpus(texts, tok, seq_len=6, mode="pad")
  assert rows.shape == (2, 6) and rows.dtype == np.int32
  assert list(rows[0]) == tok.encode(texts[0]) + [tok.eos_id, tok.pad_id, tok.pad_id]
  assert list(rows[1]) == tok.encode(texts[1])[:5] + [tok.eos_id]  # truncated, eos kept


def test_encode_corpus_pack(word_tokenizer):
  tok = word_tokenizer
  texts = ["The pub .", "A pub near the river .", "The city centre ."]
  stream = [i for text in texts for i in tok.encode(text) + [tok.eos_id]]
  rows = batching.encode_corpus(texts, tok, seq_len=4, mode="pack")
  assert rows.shape == (len(stream) // 4, 4)
  assert list(rows.reshape(-1)) == stream[:rows.size]
  assert (rows == tok.eos_id).sum() == stream[:rows.size].count(tok.eos_id)


def test_encode_full_e2e_train_is_fast(word_tokenizer, e2e_texts):
  rows = batching.encode_corpus(e2e_texts["train"], word_tokenizer, seq_len=64, mode="pad")
  assert rows.shape == (42_061, 64)
  assert ((rows == word_tokenizer.eos_id).sum(axis=1) == 1).all()


def test_batch_source_is_a_pure_function_of_seed_and_step():
  tokens = np.arange(50, dtype=np.int32).reshape(25, 2)
  batches = [batching.BatchSource(tokens, 8, seed=3).batch(step) for step in (7, 2, 7)]
  fresh = batching.BatchSource(tokens, 8, seed=3)
  assert np.array_equal(batches[0], fresh.batch(7)) and np.array_equal(batches[0], batches[2])
  assert not np.array_equal(fresh.batch(7), batching.BatchSource(tokens, 8, seed=4).batch(7))


def test_batch_source_process_slices_concatenate_to_global_batch():
  tokens = np.arange(40, dtype=np.int32).reshape(20, 2)
  source = batching.BatchSource(tokens, 8, seed=0)
  for step in (0, 3, 11):
    slices = [source.batch(step, process_index=p, process_count=4) for p in range(4)]
    assert all(s.shape == (2, 2) for s in slices)
    assert np.array_equal(np.concatenate(slices), source.batch(step))


def test_batch_source_wraps_across_epochs():
  num_rows, batch_size, seed = 10, 4, 5
  tokens = np.arange(num_rows, dtype=np.int32)[:, None]
  source = batching.BatchSource(tokens, batch_size, seed=seed)
  seen = np.concatenate([source.batch(step)[:, 0] for step in range(5)])  # 20 rows = 2 epochs
  for epoch in range(2):
    expected = np.random.default_rng([seed, epoch]).permutation(num_rows)
    assert np.array_equal(seen[epoch * num_rows:(epoch + 1) * num_rows], expected)
  assert source.num_examples == 10 and source.steps_per_epoch == 2
  unshuffled = batching.BatchSource(tokens, batch_size, seed=seed, shuffle=False)
  assert list(unshuffled.batch(2)[:, 0]) == [8, 9, 0, 1]
  assert batching.BatchSource(tokens, 32, seed=0).batch(0).shape == (32, 1)  # N < batch


def test_iterate_eval_batches_covers_every_row_once():
  tokens = np.arange(1, 15, dtype=np.int32).reshape(7, 2)
  batches = list(batching.iterate_eval_batches(tokens, batch_size=3))
  assert [len(b) for b, _ in batches] == [3, 3, 3]
  real_rows = np.concatenate([b[mask] for b, mask in batches])
  assert np.array_equal(real_rows, tokens)
  assert (batches[-1][0][~batches[-1][1]] == 0).all()
  per_process = [list(batching.iterate_eval_batches(tokens, 4, 0, p, 2)) for p in range(2)]
  assert len(per_process[0]) == len(per_process[1]) == 2
  joined = np.concatenate([b[m] for pair in zip(*per_process) for b, m in pair])
  assert np.array_equal(joined, tokens)


@pytest.mark.parametrize("texts, model_type, vocab_size, needle", [
    (["the cat sat on the mat"] * 50, "unigram", 8000, "--config.data.vocab_size=8000 is more than the training text"),
    (["x" * 10_000_000], "unigram", 100, "no line it could use"),
])
def test_tokenizer_training_failures_are_one_data_error(tmp_path, texts, model_type, vocab_size, needle):
  from diffusion_lm.errors import DataError
  with pytest.raises(DataError) as error:
    Tokenizer.train(texts, str(tmp_path / "tok"), model_type, vocab_size)
  assert needle in str(error.value) and "\n" not in str(error.value)
