"""TFDS builders for the corpora diffusion_lm trains on, and `load_texts()`.

Two builders, both written as ArrayRecord files and read back with random access
(`builder.as_data_source(split)`), so no TensorFlow is needed:

- `E2eNlg` (`e2e_nlg`): the E2E NLG Challenge dataset, from the copy bundled in this
  package (config `bundled`, no network) or the official release zip (config `official`).
- `TextFiles` (`text_files`): plain UTF-8 text files a user names, one example per line
  (PTB is loaded this way). Each set of files gets its own config, named by a hash of the
  paths, sizes and mtimes, so different corpora never collide in one tfds data dir.

The rest of the code calls only `load_texts(data_config, split)`. With `data.conditional` each text is
a (source, target) pair as one string `source<TAB>target` (data/layout.py): E2E's MR and reference, a
text file's lines as they are (each must hold a tab), or a tfds dataset's two fields.
"""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import fcntl
import functools
import hashlib
import io
import lzma
import os
import pathlib
import zipfile
from collections.abc import Callable, Iterator, Mapping
from typing import Any, TextIO

from diffusion_lm.data.layout import PAIR_SEPARATOR
from diffusion_lm.errors import DataError


def _provide_importlib_resources() -> None:
  """tfds 4.9.10 imports `importlib_resources` for any builder defined outside tfds but does
  not declare it as a dependency on Python >= 3.9; the stdlib module is what it needs."""
  try:
    import importlib_resources  # noqa: F401
  except ModuleNotFoundError:
    import importlib.resources
    import importlib.resources.abc
    import sys

    sys.modules["importlib_resources"] = importlib.resources


_provide_importlib_resources()
import tensorflow_datasets as tfds  # noqa: E402  (after the shim above)

SPLITS = ("train", "validation", "test")
SOURCES = ("e2e", "text_files", "tfds")  # config.data.name
E2E_SOURCES = ("bundled", "official")  # config.data.e2e_source
E2E_TEXT_FIELDS = ("ref", "mr")  # config.data.text_field

_BUNDLED_E2E_DIR = pathlib.Path(__file__).resolve().parent / "e2e"
_E2E_FILES = {  # split -> CSV file name, in the bundle (plus ".xz") and in the zip
    "train": "trainset.csv",
    "validation": "devset.csv",
    "test": "testset_w_refs.csv",
}
E2E_OFFICIAL_URL = (
    "https://github.com/tuetschek/e2e-dataset/releases/download/v1.0.0/e2e-dataset.zip")
# Published in /work/shared/data/README.md; checked by us because tfds has no
# checksums.tsv for a builder that lives outside its own tree.
E2E_OFFICIAL_ZIP_SHA256 = "1261064c01907af27e8cc39e0a29a81541f6ab69208c1cbfc1be95afbb49dfac"

_E2E_CITATION = """\
@inproceedings{novikova2017e2e,
  title={The {E2E} Dataset: New Challenges for End-to-End Generation},
  author={Novikova, Jekaterina and Du{\\v{s}}ek, Ond{\\v{r}}ej and Rieser, Verena},
  booktitle={Proceedings of the 18th Annual SIGdial Meeting on Discourse and Dialogue},
  year={2017},
  url={https://arxiv.org/abs/1706.09254},
}"""


# ---------------------------------------------------------------------------------------
# E2E NLG
# ---------------------------------------------------------------------------------------


class E2eNlg(tfds.core.GeneratorBasedBuilder):
  """The E2E NLG Challenge dataset: restaurant meaning representations and references.

  Example:
      >>> builder = E2eNlg(config="bundled", data_dir="/tmp/tfds", file_format="array_record")
      >>> builder.download_and_prepare()
      >>> builder.as_data_source("train")[0]["ref"]
      b'The Vaults pub near Caf\\xc3\\xa9 Adriatic has a 5 star rating.  Prices start at \\xc2\\xa330.'
  """

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "E2E release v1.0.0 (train / dev / test with references)."}
  BUILDER_CONFIGS = [
      tfds.core.BuilderConfig(name="bundled",
                              description="The copy bundled in diffusion_lm (no network)."),
      tfds.core.BuilderConfig(name="official", description=f"Downloaded from {E2E_OFFICIAL_URL}."),
  ]
  DEFAULT_CONFIG_NAME = "bundled"

  def _info(self) -> tfds.core.DatasetInfo:
    return tfds.core.DatasetInfo(
        builder=self,
        description="E2E NLG Challenge: restaurant-domain meaning representations (mr) "
        "with human reference texts (ref); several refs per mr.",
        features=tfds.features.FeaturesDict({
            "mr": tfds.features.Text(),
            "ref": tfds.features.Text()
        }),
        homepage="https://github.com/tuetschek/e2e-dataset",
        citation=_E2E_CITATION,
        license="CC BY-SA 4.0",
        disable_shuffling=True,  # keep the file order: eval sets stay in their published order
    )

  def _split_generators(self, dl_manager: tfds.download.DownloadManager):
    if self.builder_config.name == "official":
      open_csv = _official_e2e_opener(dl_manager.download(E2E_OFFICIAL_URL))
    else:
      open_csv = _bundled_e2e_opener
    return {split: self._generate_examples(open_csv, name) for split, name in _E2E_FILES.items()}

  def _generate_examples(self, open_csv: Callable[[str], contextlib.AbstractContextManager[TextIO]],
                         file_name: str) -> Iterator[tuple[int, dict[str, str]]]:
    with open_csv(file_name) as text_file:
      # A real CSV reader: two train refs contain newlines inside quotes.
      for row_index, row in enumerate(csv.DictReader(text_file)):
        yield row_index, {"mr": row["mr"], "ref": row["ref"]}


def _bundled_e2e_opener(file_name: str) -> TextIO:
  # newline="" lets the csv module see the CRLFs and the quoted newlines as they are.
  return lzma.open(_BUNDLED_E2E_DIR / f"{file_name}.xz", "rt", encoding="utf-8", newline="")


def _official_e2e_opener(zip_path: os.PathLike,
                         expected_sha256: str = E2E_OFFICIAL_ZIP_SHA256) -> Callable[[str], TextIO]:
  """Checks the downloaded release zip and returns a function opening its CSVs by base name."""
  zip_bytes = pathlib.Path(zip_path).read_bytes()
  digest = hashlib.sha256(zip_bytes).hexdigest()
  if digest != expected_sha256:
    raise DataError(f"{zip_path}: sha256 {digest} is not the official E2E release "
                    f"({expected_sha256}); delete it or set data.e2e_source='bundled'")
  archive = zipfile.ZipFile(io.BytesIO(zip_bytes))
  # Match by base name: the zip nests the CSVs in a folder (and may carry __MACOSX copies).
  members = {
      pathlib.PurePosixPath(name).name: name
      for name in archive.namelist()
      if "__MACOSX" not in name
  }

  def open_csv(file_name: str) -> TextIO:
    return io.TextIOWrapper(archive.open(members[file_name]), encoding="utf-8", newline="")

  return open_csv


# ---------------------------------------------------------------------------------------
# Plain text files
# ---------------------------------------------------------------------------------------


@dataclasses.dataclass(eq=False)
class TextFilesConfig(tfds.core.BuilderConfig):
  """One corpus of text files: `split_files` maps a split name to its absolute paths."""

  split_files: Mapping[str, tuple[str, ...]] = dataclasses.field(default_factory=dict)


class TextFiles(tfds.core.GeneratorBasedBuilder):
  """Plain UTF-8 text files, one example per line; blank lines are skipped.

  Build one with `text_files_builder()`, which names the config after the files.

  Example:
      >>> builder = text_files_builder({"train": ["/data/ptb.train.txt"]}, data_dir="/tmp/tfds")
      >>> builder.download_and_prepare(file_format="array_record")
      >>> builder.as_data_source("train")[0]["text"]
      b'aer banknote berlitz calloway ...'
  """

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "One example per non-empty line, ends stripped."}

  def _info(self) -> tfds.core.DatasetInfo:
    return tfds.core.DatasetInfo(
        builder=self,
        description="Lines of user-supplied UTF-8 text files.",
        features=tfds.features.FeaturesDict({"text": tfds.features.Text()}),
        disable_shuffling=True,  # examples stay in file order, files in the order given
    )

  def _split_generators(self, dl_manager: tfds.download.DownloadManager):
    del dl_manager  # local files only
    return {
        split: self._generate_examples(split, paths)
        for split, paths in self.builder_config.split_files.items()
    }

  def _generate_examples(self, split: str,
                         paths: tuple[str, ...]) -> Iterator[tuple[int, dict[str, str]]]:
    example_index = 0
    for path in paths:
      index_at_file_start = example_index
      for line in read_text_lines(path):
        yield example_index, {"text": line}
        example_index += 1
      if example_index == index_at_file_start:
        # Otherwise tfds fails later with a bare "No examples were yielded".
        raise DataError(f"{path}: has only blank lines; fix data.{split}_files")


def read_text_lines(path: str) -> Iterator[str]:
  """Yields the non-blank lines of a UTF-8 file with their ends stripped.

  Raises DataError naming the file and 1-based line number of any byte that is not UTF-8.

  Example:
      >>> list(read_text_lines("/data/ptb.valid.txt"))[:1]
      ['consumers may want to move their telephones a little closer to the tv set']
  """
  with open(path, "rb") as binary_file:
    for line_number, raw_line in enumerate(binary_file, start=1):
      try:
        line = raw_line.decode("utf-8")
      except UnicodeDecodeError as error:
        raise DataError(
            f"{path}, line {line_number}: byte {raw_line[error.start:error.start + 1]!r} "
            f"at column {error.start + 1} is not UTF-8; re-encode the file as UTF-8") from None
      line = line.strip()
      if line:
        yield line


def text_files_builder(split_files: Mapping[str, list[str] | tuple[str, ...]],
                       data_dir: str | None = None) -> TextFiles:
  """A `TextFiles` builder whose config name is a hash of the files' paths, sizes and mtimes.

  A changed file (new size or mtime) gets a fresh config, so stale data is never reused.

  Example:
      >>> text_files_builder({"train": ["a.txt"], "test": ["b.txt"]}, "/tmp/tfds").builder_config.name
      'files_3f2a9c0d1b7e4a65'
  """
  _check_splits(split_files)
  resolved = {
      split: tuple(os.path.abspath(p) for p in paths) for split, paths in split_files.items()
  }
  fingerprint = hashlib.sha256()
  for split in sorted(resolved):
    for path in resolved[split]:
      stat = os.stat(path)
      fingerprint.update(f"{split}\0{path}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
  config = TextFilesConfig(
      name=f"files_{fingerprint.hexdigest()[:16]}",
      description="; ".join(f"{split}: {', '.join(paths)}" for split, paths in resolved.items()),
      split_files=resolved,
  )
  return TextFiles(config=config, data_dir=data_dir, file_format="array_record")


# ---------------------------------------------------------------------------------------
# The entry point
# ---------------------------------------------------------------------------------------


def load_texts(data_config: Any, split: str) -> list[str]:
  """Returns the texts of one split, building the tfds dataset on first use.

  `data_config` fields: `name` ("e2e" | "text_files" | "tfds"), `tfds_data_dir` ("" = tfds default),
  `e2e_source` ("bundled" | "official"), `text_field` ("ref" | "mr", e2e only),
  `train_files` / `validation_files` / `test_files` (comma-separated paths, text_files only),
  `tfds_name` / `tfds_text_field` / `tfds_splits` (name="tfds": any tfds dataset by name).

  Example:
      >>> cfg = ml_collections.ConfigDict(dict(name="e2e", tfds_data_dir="/tmp/tfds",
      ...     e2e_source="bundled", text_field="ref", train_files="", validation_files="",
      ...     test_files=""))
      >>> len(load_texts(cfg, "validation"))
      4672
  """
  if split not in SPLITS:
    raise DataError(f"unknown split {split!r}; expected one of {', '.join(SPLITS)}")
  data_dir = data_config.tfds_data_dir or None
  conditional = data_config.get("conditional", False)
  if data_config.name == "e2e":
    text_field = data_config.text_field
    if text_field not in E2E_TEXT_FIELDS:
      raise DataError(f"data.text_field={text_field!r} is not 'ref' or 'mr'")
    if data_config.e2e_source not in E2E_SOURCES:
      raise DataError(f"data.e2e_source={data_config.e2e_source!r} is not 'bundled' or 'official'")
    make_builder = functools.partial(E2eNlg,
                                     config=data_config.e2e_source,
                                     data_dir=data_dir,
                                     file_format="array_record")
    if conditional:  # MR → reference.
      data_source = _prepared_builder(make_builder).as_data_source(split)
      return join_pairs(_read_field(data_source, "mr"), _read_field(data_source, "ref"))
  elif data_config.name == "text_files":
    text_field = "text"
    split_files = _configured_text_files(data_config)
    if split not in split_files:
      raise DataError(f"no {split} files configured; set data.{split}_files")
    if conditional:
      for path in split_files[split]:
        check_pair_lines(path)
    make_builder = functools.partial(text_files_builder, split_files, data_dir)
  elif data_config.name == "tfds":
    return _load_tfds_texts(data_config, split, data_dir)
  else:
    raise DataError(f"unknown data.name={data_config.name!r}; expected 'e2e', 'text_files' or 'tfds'")
  return _read_field(_prepared_builder(make_builder).as_data_source(split), text_field)


def _load_tfds_texts(data_config: Any, split: str, data_dir: str | None) -> list[str]:
  """Any tfds dataset by name (`data.tfds_name`, e.g. "lm1b"), its `data.tfds_text_field`;
  `data.tfds_splits` renames splits ("validation=test": lm1b has no validation split)."""
  name = data_config.get("tfds_name", "")
  if not name:
    raise DataError("data.name='tfds' needs --config.data.tfds_name=NAME[/CONFIG][:VERSION], e.g. lm1b")
  renames = dict(item.split("=", 1) for item in data_config.get("tfds_splits", "").split(",") if "=" in item)
  tfds_split = renames.get(split, split).strip()
  try:
    builder = _prepared_builder(
        functools.partial(tfds.builder, name, data_dir=data_dir, file_format="array_record"))
  except tfds.core.registered.DatasetNotFoundError:
    raise DataError(f"data.tfds_name={name!r} is not a tfds dataset; see tfds.list_builders()") from None
  except ImportError as error:  # Some builders (lm1b) need TensorFlow to prepare, never to read.
    raise DataError(f"preparing tfds {name!r} needs {error.name or 'TensorFlow'} once: pip install "
                    "tensorflow-cpu, or prepare it elsewhere and set data.tfds_data_dir") from None
  if tfds_split not in builder.info.splits:
    raise DataError(f"tfds {name!r} has no {tfds_split!r} split (it has {', '.join(builder.info.splits)}); "
                    f"map it with --config.data.tfds_splits={split}=<one of those>")
  data_source = builder.as_data_source(tfds_split)
  targets = _read_field(data_source, data_config.get("tfds_text_field", "text"))
  if not data_config.get("conditional", False):
    return targets
  source_field = data_config.get("tfds_source_field", "")
  if not source_field:
    raise DataError("a conditional tfds dataset needs --config.data.tfds_source_field=FIELD (the source text)")
  return join_pairs(_read_field(data_source, source_field), targets)


def join_pairs(sources: list[str], targets: list[str]) -> list[str]:
  """`source<TAB>target` per example; tabs and newlines inside a field become spaces.

  Example:
      >>> join_pairs(["name[The Eagle]"], ["The Eagle is a pub."])
      ['name[The Eagle]\tThe Eagle is a pub.']
  """
  flatten = lambda text: " ".join(text.split())
  return [f"{flatten(source)}{PAIR_SEPARATOR}{flatten(target)}" for source, target in zip(sources, targets)]


def check_pair_lines(path: str) -> None:
  """DataError naming the first line of `path` without a tab (a conditional corpus needs source<TAB>target).

  Example:
      >>> check_pair_lines("/data/pairs.tsv")   # DataError: /data/pairs.tsv, line 3: no tab ...
  """
  for line_number, line in _numbered_text_lines(path):
    if PAIR_SEPARATOR not in line.strip():  # Stripped as read_text_lines strips: a leading tab is lost.
      raise DataError(f"{path}, line {line_number}: no tab between source and target; a conditional config (--config.data.conditional=True) "
                      "reads source<TAB>target lines; add the tab or set --config.data.conditional=False")


def _numbered_text_lines(path: str) -> Iterator[tuple[int, str]]:
  """(1-based line number, raw line without its newline) of each non-blank line of a UTF-8 file."""
  with open(path, encoding="utf-8", errors="replace") as text_file:
    for line_number, line in enumerate(text_file, start=1):
      if line.strip():
        yield line_number, line.rstrip("\r\n")


def check_data_files(data_config, splits: tuple[str, ...] = ("train", "validation")) -> None:
  """Raises DataError unless every split in `splits` has readable, non-blank, UTF-8 text files.

  Only for `data.name="text_files"` (the bundled corpora need no check). Reads each file once,
  so a bad byte is reported with its file and line before any work starts, not halfway through
  building the dataset.

  Example:
    >>> check_data_files(config.data)   # DataError: /data/a.txt, line 7: byte b'\xff' ... is not UTF-8
  """
  if data_config.name != "text_files":
    return
  split_files = _configured_text_files(data_config)  # Exists and non-empty, or DataError.
  for split in splits:
    if split not in split_files:
      raise DataError(f"no {split} files configured; set --config.data.{split}_files=PATH[,PATH...]")
    for path in split_files[split]:
      non_blank_lines = sum(1 for _ in read_text_lines(path))  # Raises at a non-UTF-8 line.
      if not non_blank_lines:
        raise DataError(f"{path}: has only blank lines; fix --config.data.{split}_files")
      if data_config.get("conditional", False):  # Before the workdir is made, not when the data is read.
        check_pair_lines(path)


def _configured_text_files(data_config: Any) -> dict[str, list[str]]:
  """Checks every configured file exists and is non-empty; returns split -> paths."""
  split_files = {}
  for split in SPLITS:
    field = f"{split}_files"
    paths = [p.strip() for p in (data_config.get(field) or "").split(",") if p.strip()]
    for path in paths:
      if os.path.isdir(path):
        raise DataError(f"data.{field}: {os.path.abspath(path)!r} is a directory; give text files (one example "
                        f"per line), comma-separated, in data.{field}")
      if not os.path.isfile(path):
        raise DataError(
            f"data.{field}: file {os.path.abspath(path)!r} does not exist; fix data.{field}")
      if os.path.getsize(path) == 0:
        raise DataError(f"data.{field}: file {os.path.abspath(path)!r} is empty; fix data.{field}")
    if paths:
      split_files[split] = paths
  if not split_files:
    raise DataError("data.name='text_files' but no files are configured; set data.train_files")
  return split_files


def _prepared_builder(
    make_builder: Callable[[], tfds.core.DatasetBuilder],) -> tfds.core.DatasetBuilder:
  """A builder whose data is on disk, built under a file lock so that N processes sharing
  one data dir (multi-process runs) build it once instead of racing on the final rename."""
  builder = make_builder()
  if builder.is_prepared():
    return builder
  root = str(builder.data_dir_root)
  with contextlib.ExitStack() as stack:
    if "://" not in root:  # file locks only on local file systems
      os.makedirs(root, exist_ok=True)
      lock_file = stack.enter_context(open(os.path.join(root, ".diffusion_lm.lock"), "w"))
      fcntl.flock(lock_file, fcntl.LOCK_EX)
    # A fresh builder: its info (splits) is read from disk at construction, and another
    # process may have finished the build while we waited for the lock.
    builder = make_builder()
    if not builder.is_prepared():
      builder.download_and_prepare(file_format="array_record")
  return builder


def _read_field(data_source: Any, field: str, chunk_size: int = 8192) -> list[str]:
  """Decodes one text field of every example, in order, reading in chunks (batched reads
  are much faster than one random access per example)."""
  texts: list[str] = []
  for start in range(0, len(data_source), chunk_size):
    keys = list(range(start, min(start + chunk_size, len(data_source))))
    texts.extend(example[field].decode("utf-8") for example in data_source.__getitems__(keys))
  return texts


def _check_splits(split_files: Mapping[str, Any]) -> None:
  unknown = set(split_files) - set(SPLITS)
  if unknown:
    raise DataError(f"unknown split(s) {sorted(unknown)}; expected {', '.join(SPLITS)}")
