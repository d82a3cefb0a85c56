"""Documents from input files, in pieces that tokenisation processes take one at a time.

Inputs (``list_inputs``):
- ``.txt``: ``txt_docs="file"`` (default): the whole file is one document (books, articles);
  ``txt_docs="blank-line"``: every block separated by one or more blank lines is a document.
- ``.jsonl``: one JSON object a line; the document is its ``text_field``. Blank lines skip.
- ``.json``: a JSON array of such objects, or JSON lines (what ``datasets``' ``to_json`` writes).
- each of these also compressed: ``.gz``, ``.zst``, ``.xz`` (read as a stream, never whole).
- ``.parquet``: the column ``text_field``, read a row group at a time.
- a ``datasets`` ``save_to_disk`` folder (``state.json`` + ``data-*.arrow``): the column ``text_field``,
  read from the memory-mapped Arrow files a record batch at a time (pyarrow only; ``datasets`` need not be
  installed).
- a Megatron-LM / GPT-NeoX indexed dataset, ``PREFIX.bin`` + ``PREFIX.idx`` (name either file or the
  prefix): documents already tokenised; they are re-cut into samples (``MegatronIndex``).
- a folder stands for every input above below it, in sorted path order; a glob (``data/*.jsonl.zst``,
  ``**`` recursive) for its matches, sorted; ``@LIST`` for the inputs named in the file LIST, one a line.
Documents that are empty or only whitespace are skipped (they would add a bare EOS). Text must be UTF-8.

Pieces (``plan_pieces``): an uncompressed ``.jsonl`` (or JSON-lines ``.json``) is cut into byte ranges of
about ``unit_bytes`` at line starts, a parquet file into row groups, an indexed dataset into document
ranges, a ``datasets`` folder into its Arrow files; a compressed file or a ``.txt`` is one piece. A piece
depends only on the file and ``unit_bytes``, never on the number of processes. Every error names the file
and the line, byte offset, row or document at fault.
"""
from __future__ import annotations

import codecs
import glob
import itertools
import json
import re
import struct
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Iterator, Optional, Sequence

import numpy as np

from statex_dist.data.errors import DataError, MissingDataError

TEXT_SUFFIXES = (".txt", ".jsonl", ".json")
COMPRESSIONS = (".gz", ".zst", ".xz")
_BLANK = re.compile(r"\n[ \t\r\f\v]*\n")
_READ = 1 << 20
MEGATRON_HEADER = b"MMIDIDX\x00\x00"
# Megatron-LM's DType codes (megatron/core/datasets/indexed_dataset.py)
MEGATRON_DTYPES = {1: np.uint8, 2: np.int8, 3: np.int16, 4: np.int32, 5: np.int64, 8: np.uint16}
SUPPORTED = ("a .txt / .jsonl / .json file (each also .gz / .zst / .xz), .parquet, a datasets save_to_disk "
             "folder, or a Megatron-LM PREFIX.bin + PREFIX.idx pair")


@dataclass(frozen=True)
class Input:
    """One input as given: ``path`` (a file, a ``datasets`` folder, or a Megatron prefix) and its kind."""
    path: Path
    kind: str                  # txt | jsonl | json | parquet | arrow | megatron
    compression: str = ""      # "" | gz | zst | xz

    def files(self) -> list[Path]:
        """The files that hold it, in the order their bytes identify it."""
        if self.kind == "arrow":
            return [self.path / "state.json"] + arrow_files(self.path)
        if self.kind == "megatron":
            return [Path(f"{self.path}.idx"), Path(f"{self.path}.bin")]
        return [self.path]

    def nbytes(self) -> int:
        return sum(f.stat().st_size for f in self.files())


def _classify(p: Path) -> Optional[Input]:
    """The input a file is, or None for a file of no supported kind."""
    name = p.name
    comp = next((c for c in COMPRESSIONS if name.endswith(c)), "")
    stem = name[: len(name) - len(comp)] if comp else name
    for s in TEXT_SUFFIXES:
        if stem.endswith(s):
            return Input(p, s[1:], comp[1:])
    if not comp and name.endswith(".parquet"):
        return Input(p, "parquet")
    if not comp and (name.endswith(".bin") or name.endswith(".idx")):
        return Input(p.with_suffix(""), "megatron")
    return None


def _is_arrow_folder(p: Path) -> bool:
    return (p / "state.json").is_file() and (p / "dataset_info.json").is_file()


def arrow_files(folder: Path) -> list[Path]:
    """A ``save_to_disk`` folder's data files, in the order its ``state.json`` lists them."""
    state = folder / "state.json"
    try:
        files = [folder / f["filename"] for f in json.loads(state.read_text())["_data_files"]]
    except (ValueError, KeyError, TypeError) as e:
        raise DataError(f"{state}: not a datasets save_to_disk state ({type(e).__name__}: {e})") from e
    for f in files:
        if not f.is_file():
            raise MissingDataError(f"{f} listed in {state} is missing")
    return files


def _megatron_input(prefix: Path, named: Path) -> Input:
    for ext in (".bin", ".idx"):
        if not Path(f"{prefix}{ext}").is_file():
            raise MissingDataError(f"input {named}: a Megatron-LM indexed dataset needs both {prefix}.bin and "
                                   f"{prefix}.idx; {prefix}{ext} does not exist")
    return Input(prefix, "megatron")


def _one(p: Path, named: str) -> list[Input]:
    if p.is_dir():
        if _is_arrow_folder(p):
            return [Input(p, "arrow")]
        if (p / "dataset_dict.json").is_file():
            splits = sorted(d.name for d in p.iterdir() if d.is_dir())
            raise DataError(f"input {p} is a datasets DatasetDict; name one of its splits, e.g. {p / splits[0]}"
                            if splits else f"input {p} is a datasets DatasetDict with no split folder")
        found, megatron = [], set()
        for f in sorted(f for f in p.rglob("*") if f.is_file()):
            if any(_is_arrow_folder(a) for a in f.parents if p in a.parents or a == p):
                continue  # inside a datasets folder below p: that folder is one input (below)
            i = _classify(f)
            if i is None or (i.kind == "megatron" and i.path in megatron):
                continue
            if i.kind == "megatron":
                megatron.add(i.path)
                i = _megatron_input(i.path, f)
            found.append(i)
        found += [Input(d, "arrow") for d in sorted(d for d in p.rglob("*") if d.is_dir() and _is_arrow_folder(d))]
        found.sort(key=lambda i: str(i.path))
        if not found:
            raise DataError(f"input folder {p} holds no .txt or .jsonl files (nor any other input: {SUPPORTED})")
        return found
    if p.is_file():
        i = _classify(p)
        if i is None:
            raise DataError(f"input {p}: unsupported type '{p.suffix}' (use {SUPPORTED})")
        if i.kind == "megatron":
            return [_megatron_input(i.path, p)]
        if p.stat().st_size == 0:  # named on purpose, so empty by mistake (a folder's empty files are skipped)
            raise DataError(f"input {p} is empty (0 bytes)")
        return [i]
    if Path(f"{p}.bin").exists() or Path(f"{p}.idx").exists():
        return [_megatron_input(p, p)]
    if any(c in named for c in "*?["):
        hits = sorted(glob.glob(named, recursive=True))
        if not hits:
            raise MissingDataError(f"input {named}: the pattern matches no file")
        return [i for h in hits for i in _one(Path(h), h)]
    raise MissingDataError(f"input {p} does not exist")


def list_inputs(paths: Sequence[str | Path]) -> list[Input]:
    """Expand folders, globs and @lists; keep the given order of explicit inputs (part of the output's identity)."""
    out: list[Input] = []
    for named in map(str, paths):
        if named.startswith("@"):
            listing = Path(named[1:])
            if not listing.is_file():
                raise MissingDataError(f"input list {listing} does not exist")
            lines = [ln.strip() for ln in listing.read_text().splitlines()]
            items = [ln for ln in lines if ln and not ln.startswith("#")]
            if not items:
                raise DataError(f"input list {listing} names no input")
            out += list_inputs(items)
        else:
            out += _one(Path(named), named)
    if not out:
        raise DataError("no inputs given")
    seen = set()
    for i in out:
        if i.path in seen:
            raise DataError(f"input {i.path} is given twice; its documents would be written twice")
        seen.add(i.path)
    return out


# --- pieces -----------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Piece:
    """A part of input ``index``: bytes ``[start, end)`` (jsonl), row groups or Arrow files ``[start, end)``
    (parquet, a datasets folder) or documents ``[start, end)`` (indexed dataset); the whole input for the rest."""
    index: int
    path: str
    kind: str
    compression: str
    start: int
    end: int
    nbytes: int

    def as_dict(self) -> dict:
        return asdict(self)


def plan_pieces(inputs: Sequence[Input], unit_bytes: int, text_field: str) -> list[Piece]:
    """Every input cut into pieces (see the module docstring), in input order; reads only metadata, and
    checks what metadata can show (a missing text column, an index that does not match its data)."""
    out = []
    for n, inp in enumerate(inputs):
        p = str(inp.path)
        if inp.kind in ("jsonl", "json") and not inp.compression and not _json_array(inp.path):
            size = inp.path.stat().st_size
            cuts = list(range(0, size, max(1, unit_bytes))) + [size]
            out += [Piece(n, p, "jsonl", "", a, b, b - a) for a, b in zip(cuts, cuts[1:])]
        elif inp.kind == "parquet":
            meta = _parquet_meta(inp.path, text_field)
            out += [Piece(n, p, "parquet", "", g, g + 1, meta.row_group(g).total_byte_size)
                    for g in range(meta.num_row_groups)]
        elif inp.kind == "arrow":
            files = arrow_files(inp.path)
            for k, f in enumerate(files):
                _arrow_schema_check(f, text_field)
                out.append(Piece(n, p, "arrow", "", k, k + 1, f.stat().st_size))
        elif inp.kind == "megatron":
            idx = MegatronIndex(inp.path)
            docs = idx.documents
            per = max(1, int(unit_bytes // max(1, idx.itemsize * max(1, idx.tokens // max(1, docs)))))
            cuts = list(range(0, docs, per)) + [docs]
            out += [Piece(n, p, "megatron", "", a, b, idx.doc_nbytes(a, b)) for a, b in zip(cuts, cuts[1:])]
        else:
            out.append(Piece(n, p, inp.kind, inp.compression, 0, 0, inp.path.stat().st_size))
    return out


def _json_array(path: Path) -> bool:
    """Whether a .json file holds one JSON array (else it is JSON lines)."""
    with open(path, "rb") as f:
        head = f.read(4096).lstrip()
    return head[:1] == b"["


# --- opening (de)compressed text ---------------------------------------------------------------------------

class _Counted:
    """A raw file that counts the bytes read from it, so a decompression error can name its byte offset."""

    def __init__(self, f):
        self.f, self.pos = f, 0

    def read(self, n=-1):
        b = self.f.read(n)
        self.pos += len(b)
        return b

    def readinto(self, b):
        n = self.f.readinto(b)
        self.pos += n or 0
        return n

    def readable(self):
        return True

    def close(self):
        self.f.close()


def _open_binary(path: str, compression: str):
    """(a binary stream of the decompressed bytes, the counter of compressed bytes read)."""
    raw = _Counted(open(path, "rb"))
    if compression == "gz":
        import gzip
        return gzip.GzipFile(fileobj=raw), raw
    if compression == "xz":
        import lzma
        return lzma.LZMAFile(raw), raw
    if compression == "zst":
        import zstandard
        return zstandard.ZstdDecompressor().stream_reader(raw, read_across_frames=True), raw
    return raw, raw


def _stream_error(path: str, compression: str, raw: _Counted, e: Exception) -> DataError:
    what = f"corrupt {compression} data" if compression else "read error"
    return DataError(f"{path}: {what} near compressed byte {raw.pos} ({type(e).__name__}: {e})")


def _chunks(path: str, compression: str) -> Iterator[bytes]:
    """The decompressed bytes of a file in blocks; a damaged stream is one error naming its byte offset."""
    f, raw = _open_binary(path, compression)
    try:
        while True:
            try:
                b = f.read(_READ)
            except (OSError, EOFError, ValueError) as e:
                raise _stream_error(path, compression, raw, e) from e
            except Exception as e:  # zstandard raises its own ZstdError
                if type(e).__module__.startswith("zstandard") or type(e).__name__ == "ZstdError":
                    raise _stream_error(path, compression, raw, e) from e
                raise
            if not b:
                return
            yield b
    finally:
        f.close()


def _lines(piece: Piece) -> Iterator[tuple[Optional[int], int, bytes]]:
    """(line number or None, byte offset in the (decompressed) text, line) of a piece's lines."""
    if piece.compression:
        off, lineno, rest = 0, 1, b""
        for block in _chunks(piece.path, piece.compression):
            buf = rest + block
            start = 0
            while True:
                nl = buf.find(b"\n", start)
                if nl < 0:
                    break
                yield lineno, off, buf[start:nl + 1]
                off += nl + 1 - start
                lineno += 1
                start = nl + 1
            rest = buf[start:]
        if rest:
            yield lineno, off, rest
        return
    with open(piece.path, "rb") as f:
        pos = piece.start
        if pos > 0:  # a range that starts inside a line leaves that line to the range before
            f.seek(pos - 1)
            if f.read(1) != b"\n":
                pos += len(f.readline())
        lineno = 1 if piece.start == 0 else None
        while pos < piece.end:
            line = f.readline()
            if not line:
                return
            yield lineno, pos, line
            pos += len(line)
            if lineno is not None:
                lineno += 1


def _where(piece: Piece, lineno: Optional[int], off: int) -> str:
    text = " of the decompressed text" if piece.compression else ""
    return f"{piece.path}:{lineno}" if lineno is not None else f"{piece.path}, line at byte {off}{text}"


def _field(obj, field: str, where: str, off: int, what: str = "JSON object"):
    try:
        text = obj[field]
    except (KeyError, TypeError, IndexError) as e:
        raise DataError(f"{where}: not a {what} with a '{field}' field ({type(e).__name__}: {e}), at byte "
                        f"{off}") from e
    if not isinstance(text, str):
        raise DataError(f"{where}: '{field}' is {type(text).__name__}, not a string, at byte {off}")
    return text


def _jsonl_docs(piece: Piece, field: str) -> Iterator[tuple[Optional[str], int]]:
    for lineno, off, line in _lines(piece):
        if not line.strip():
            yield None, len(line)
            continue
        where = _where(piece, lineno, off)
        try:
            obj = json.loads(line)
        except ValueError as e:  # UnicodeDecodeError is one too
            raise DataError(f"{where}: not a JSON object with a '{field}' field ({type(e).__name__}: {e}), "
                            f"at byte {off}") from e
        text = _field(obj, field, where, off)
        yield (text if text.strip() else None), len(line)


def _json_array_docs(piece: Piece, field: str) -> Iterator[tuple[Optional[str], int]]:
    """The objects of one JSON array, decoded one at a time from a sliding buffer (memory: one object)."""
    dec, utf8 = json.JSONDecoder(), codecs.getincrementaldecoder("utf-8")()
    blocks = _chunks(piece.path, piece.compression)
    buf, pos, base, item, eof, began = "", 0, 0, 0, False, False

    def more() -> bool:
        nonlocal buf, pos, base, eof
        if eof:
            return False
        b = next(blocks, None)
        try:
            text = utf8.decode(b or b"", final=b is None)
        except UnicodeDecodeError as e:
            raise DataError(f"{piece.path}: not UTF-8 near character {base + len(buf)} ({e})") from e
        eof = b is None
        base += pos
        buf, pos = buf[pos:] + text, 0
        return True

    while True:
        while pos < len(buf) and buf[pos] in " \t\r\n" + ("," if began else ""):
            pos += 1
        if pos >= len(buf):
            if more():
                continue
            raise DataError(f"{piece.path}: the JSON array ends early (item {item}, character {base + pos})")
        if not began:
            if buf[pos] != "[":
                raise DataError(f"{piece.path}: not a JSON array (character {base + pos})")
            began, pos = True, pos + 1
            continue
        if buf[pos] == "]":
            return
        try:
            obj, end = dec.raw_decode(buf, pos)
        except ValueError as e:
            if more():
                continue
            raise DataError(f"{piece.path}: item {item} of the JSON array is not JSON ({e}), at character "
                            f"{base + pos}") from e
        if end == len(buf) and not eof and more():  # a number may go on in the next block
            continue
        text = _field(obj, field, f"{piece.path}: item {item}", base + pos)
        yield (text if text.strip() else None), 0
        item, pos = item + 1, end


def _txt_docs(piece: Piece, txt_docs: str) -> Iterator[tuple[Optional[str], int]]:
    if txt_docs not in ("file", "blank-line"):
        raise DataError(f"txt_docs must be 'file' or 'blank-line', not {txt_docs!r}")
    utf8 = codecs.getincrementaldecoder("utf-8")()
    parts, done, rest = [], 0, ""
    for block in itertools.chain(_chunks(piece.path, piece.compression), [None]):
        try:
            text = utf8.decode(block or b"", final=block is None)
        except UnicodeDecodeError as e:
            raise DataError(f"{piece.path}: not UTF-8 ({e.reason} at byte {done + e.start})") from e
        done += len(block or b"")
        if txt_docs == "file":
            parts.append(text)
            continue
        rest += text
        blocks = _BLANK.split(rest)
        rest = blocks.pop() if block is not None else ""
        for b in blocks:
            if b.strip():
                yield b.strip("\n"), 0
    if txt_docs == "file":
        text = "".join(parts)
        yield (text if text.strip() else None), piece.nbytes
    else:
        yield None, piece.nbytes


def _parquet_meta(path: Path, field: str):
    import pyarrow.parquet as pq
    try:
        f = pq.ParquetFile(path)
    except Exception as e:  # pyarrow raises ArrowInvalid / OSError for a file that is not parquet
        raise DataError(f"{path}: not a readable parquet file ({type(e).__name__}: {e})") from e
    names = f.schema_arrow.names
    if field not in names:
        raise DataError(f"{path}: no column '{field}' (columns: {names}); pass --text-field")
    return f.metadata


def _arrow_schema_check(path: Path, field: str) -> None:
    import pyarrow as pa
    try:
        with pa.memory_map(str(path)) as src:
            names = pa.ipc.open_stream(src).schema.names
    except Exception as e:  # ArrowInvalid for a damaged or foreign file
        raise DataError(f"{path}: not a readable Arrow stream file ({type(e).__name__}: {e})") from e
    if field not in names:
        raise DataError(f"{path}: no column '{field}' (columns: {names}); pass --text-field")


def _column_docs(batches, where: str, field: str) -> Iterator[tuple[Optional[str], int]]:
    """Strings of column ``field`` of record batches; ``where(row)`` names a row in an error."""
    import pyarrow as pa
    row = 0
    for batch in batches:
        col = batch.column(batch.schema.get_field_index(field))
        if not (pa.types.is_string(col.type) or pa.types.is_large_string(col.type)):
            raise DataError(f"{where(row)}: column '{field}' holds {col.type}, not strings")
        nbytes = batch.nbytes // max(1, batch.num_rows)
        for k, text in enumerate(col.to_pylist()):
            if text is None:
                raise DataError(f"{where(row + k)}: '{field}' is null, not a string")
            yield (text if text.strip() else None), nbytes
        row += batch.num_rows


def _parquet_docs(piece: Piece, field: str):
    import pyarrow.parquet as pq
    f = pq.ParquetFile(piece.path)
    first = sum(f.metadata.row_group(g).num_rows for g in range(piece.start))
    try:
        table = f.read_row_group(piece.start, columns=[field])
    except Exception as e:  # a damaged page: pyarrow's OSError / ArrowInvalid
        raise DataError(f"{piece.path}: row group {piece.start} (rows from {first}) is unreadable "
                        f"({type(e).__name__}: {e})") from e
    yield from _column_docs(table.to_batches(),
                            lambda r: f"{piece.path}: row {first + r} (row group {piece.start})", field)


def _arrow_docs(piece: Piece, field: str):
    import pyarrow as pa
    path = arrow_files(Path(piece.path))[piece.start]
    with pa.memory_map(str(path)) as src:
        reader = pa.ipc.open_stream(src)

        def batches():
            while True:
                try:
                    yield reader.read_next_batch()
                except StopIteration:
                    return
                except Exception as e:  # ArrowInvalid: a truncated or damaged stream
                    raise DataError(f"{path}: unreadable record batch ({type(e).__name__}: {e})") from e
        yield from _column_docs(batches(), lambda r: f"{path}: row {r}", field)


def iter_piece(piece: Piece, text_field: str = "text", txt_docs: str = "file"):
    """Yield ``(document, input bytes consumed)``: a str, or for an indexed dataset a token array; a ``None``
    document only reports progress."""
    if piece.kind == "jsonl":
        yield from _jsonl_docs(piece, text_field)
    elif piece.kind == "json":
        if piece.compression and not _compressed_json_array(piece):
            yield from _jsonl_docs(piece, text_field)
        else:
            yield from _json_array_docs(piece, text_field)
    elif piece.kind == "txt":
        yield from _txt_docs(piece, txt_docs)
    elif piece.kind == "parquet":
        yield from _parquet_docs(piece, text_field)
    elif piece.kind == "arrow":
        yield from _arrow_docs(piece, text_field)
    elif piece.kind == "megatron":
        yield from MegatronIndex(Path(piece.path)).iter_docs(piece.start, piece.end)
    else:
        raise DataError(f"{piece.path}: unknown input kind {piece.kind!r}")


def _compressed_json_array(piece: Piece) -> bool:
    for block in _chunks(piece.path, piece.compression):
        head = block.lstrip()
        if head:
            return head[:1] == b"["
    return False


# --- Megatron-LM / GPT-NeoX indexed datasets ----------------------------------------------------------------

class MegatronIndex:
    """A ``PREFIX.idx`` / ``PREFIX.bin`` pair as megatron-core's ``IndexedDataset`` writes it: the header
    ``MMIDIDX\\0\\0``, version 1, a dtype code, the sequence and document counts, then int32 sequence
    lengths, int64 byte pointers and int64 document boundaries (indices of sequences).

    Read with numpy here: importing megatron-core pulls in torch and its training stack (seconds a process,
    in every tokenisation process), for a format of five fields.
    """

    def __init__(self, prefix: Path):
        self.prefix = prefix
        self.idx_path, self.bin_path = Path(f"{prefix}.idx"), Path(f"{prefix}.bin")
        with open(self.idx_path, "rb") as f:
            head = f.read(34)
        if len(head) < 34 or head[:9] != MEGATRON_HEADER:
            raise DataError(f"{self.idx_path}: not a Megatron-LM index (its first bytes are {head[:9]!r}, "
                            f"expected {MEGATRON_HEADER!r})")
        version, code, n_seq, n_doc = struct.unpack("<QBQQ", head[9:34])
        if version != 1 or code not in MEGATRON_DTYPES:
            raise DataError(f"{self.idx_path}: index version {version}, dtype code {code}: not one this reader "
                            f"knows (version 1, codes {sorted(MEGATRON_DTYPES)})")
        self.dtype = np.dtype(MEGATRON_DTYPES[code]).newbyteorder("<")
        self.itemsize = self.dtype.itemsize
        want = 34 + n_seq * (4 + 8) + n_doc * 8
        size = self.idx_path.stat().st_size
        if size < want:
            raise DataError(f"{self.idx_path}: {size} bytes, its header promises {n_seq} sequences and "
                            f"{n_doc - 1} documents ({want} bytes); the index is truncated")
        mm = np.memmap(self.idx_path, mode="r", dtype=np.uint8)
        self.lengths = np.frombuffer(mm, np.int32, n_seq, 34)
        self.pointers = np.frombuffer(mm, np.int64, n_seq, 34 + 4 * n_seq)
        self.doc_index = np.frombuffer(mm, np.int64, n_doc, 34 + 12 * n_seq)
        self.documents = max(0, n_doc - 1)
        self.tokens = int(self.lengths.sum(dtype=np.int64))
        bin_size = self.bin_path.stat().st_size
        if bin_size != self.tokens * self.itemsize:
            raise DataError(f"{self.bin_path}: {bin_size} bytes, {self.idx_path} describes {self.tokens} tokens of "
                            f"{self.dtype.name} ({self.tokens * self.itemsize} bytes): the pair does not match")
        if n_doc and (self.doc_index[0] != 0 or self.doc_index[-1] != n_seq):
            raise DataError(f"{self.idx_path}: document boundaries {self.doc_index[0]}..{self.doc_index[-1]} do not "
                            f"span its {n_seq} sequences; the index is damaged")

    def doc_nbytes(self, a: int, b: int) -> int:
        s0, s1 = int(self.doc_index[a]), int(self.doc_index[b])
        return int(self.lengths[s0:s1].sum(dtype=np.int64)) * self.itemsize

    def doc(self, d: int, data=None) -> np.ndarray:
        data = np.memmap(self.bin_path, mode="r", dtype=self.dtype) if data is None else data
        s0, s1 = int(self.doc_index[d]), int(self.doc_index[d + 1])
        if s1 <= s0:
            return np.empty(0, np.int64)
        first = int(self.pointers[s0]) // self.itemsize
        n = int(self.lengths[s0:s1].sum(dtype=np.int64))
        return np.asarray(data[first:first + n], dtype=np.int64)

    def iter_docs(self, a: int, b: int):
        data = np.memmap(self.bin_path, mode="r", dtype=self.dtype) if self.tokens else None
        for d in range(a, b):
            ids = self.doc(d, data)
            if len(ids) and int(ids.min()) < 0:
                raise DataError(f"{self.bin_path}: document {d} holds the negative token id {int(ids.min())}")
            yield ids, len(ids) * self.itemsize

    def check_tokenizer(self, tok, sample_docs: int = 8) -> Optional[int]:
        """Check the data against ``tok``; return the id every document already ends with, if any.

        Refused: an index dtype too narrow for the vocabulary, a token id outside it, documents that all end
        in one token that is not ``tok``'s EOS (another tokenizer's end-of-document), and documents that do
        not survive decode -> encode with ``tok`` (ids of another vocabulary)."""
        where = f"{self.prefix}.bin/.idx"
        if self.documents == 0:
            raise DataError(f"{where} holds no documents")
        if np.iinfo(self.dtype).max < tok.vocab_size - 1 and self.dtype.kind != "i":
            raise DataError(f"{where} stores {self.dtype.name} ids, too narrow for tokenizer {tok.name}'s "
                            f"vocabulary of {tok.vocab_size}: it was tokenised with another tokenizer")
        data = np.memmap(self.bin_path, mode="r", dtype=self.dtype)
        step = max(1, self.documents // sample_docs)
        picks = list(range(0, self.documents, step))[:sample_docs]
        docs = [self.doc(d, data) for d in picks]
        for d, ids in zip(picks, docs):
            if len(ids) and int(ids.max()) >= tok.vocab_size:
                raise DataError(f"{self.bin_path}: document {d} holds token id {int(ids.max())}, outside tokenizer "
                                f"{tok.name}'s vocabulary of {tok.vocab_size}; pass the tokenizer the data was made with")
        lasts = {int(ids[-1]) for ids in docs if len(ids)}
        end = lasts.pop() if len(lasts) == 1 and len(docs) > 1 else None
        if end is not None and end != tok.eos_id and end not in (tok.bos_id, tok.pad_id):
            raise DataError(f"{where}: every document ends with token {end}, not tokenizer {tok.name}'s EOS "
                            f"{tok.eos_id}: the data was tokenised with another end-of-document token")
        bodies = [ids[:-1] if end is not None else ids for ids in docs]
        bodies = [b[:512] for b in bodies if len(b)]
        same = sum(1 for b in bodies if _round_trips(tok, b))
        if bodies and same * 2 < len(bodies):
            raise DataError(f"{where}: {len(bodies) - same} of {len(bodies)} sampled documents change under "
                            f"decode -> encode with tokenizer {tok.name}: the ids come from another vocabulary")
        return end if end == tok.eos_id else None


def _round_trips(tok, ids: np.ndarray) -> bool:
    """Whether ``ids`` encode back from their text (the first 16 tokens, where a cut cannot split a word)."""
    head = ids[:16]
    try:
        again = tok.encode_batch([tok.decode(head)])[0]
    except Exception:  # a tokenizer that cannot decode these ids is the mismatch being tested for
        return False
    n = min(len(head), len(again)) - 1  # the last token may merge differently at the cut
    return n > 0 and np.array_equal(np.asarray(again[:n]), head[:n])
