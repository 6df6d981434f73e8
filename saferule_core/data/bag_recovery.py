"""Bags left open by a crash: an MCAP bag directory without metadata.yaml, recovered in place.

A rosbag2 bag is complete once its metadata.yaml exists; a writer killed before closing its bag
(kill -9, power loss) leaves an .mcap file without summary and footer, which neither rosbags nor
`ros2 bag` opens. MCAP is a sequence of length-prefixed records, so everything up to the last
complete record is still readable: `recover_bag` reads it (schemas, channels and messages, inside
chunks or not), writes it again as a complete bag and then puts metadata.yaml in place.

What a crash loses is what the writer had not yet handed to the OS: rosbags keeps the open chunk
(up to 1 MiB of messages) in memory, which is why the recorder closes its chunk and flushes the file
every `flush_period_s`; a record cut off mid-write is dropped and counted in `dropped_bytes`.

A writer holds `BagLock` on its bag directory while it writes; recovery takes the same lock without
waiting and leaves a bag alone while someone holds it (a bag still being recorded). The kernel
drops the lock of a killed process.
"""

from __future__ import annotations

import fcntl
import os
import shutil
import struct
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from rosbags.interfaces import Connection
from rosbags.rosbag2 import StoragePlugin, Writer
from rosbags.rosbag2.storage_mcap import decompress
from rosbags.typesys import Stores, get_types_from_idl, get_types_from_msg, get_typestore

from saferule_core.errors import DatasetError

METADATA_FILE = "metadata.yaml"
MCAP_MAGIC = b"\x89MCAP0\r\n"
RECOVERY_DIR = ".recovering"   # inside the bag directory: the rewritten bag before it replaces the old
CUSTOM_DATA_PREFIX = "saferule.recovered."
BAG_VERSION: Literal[8, 9] = 9

# MCAP record opcodes (https://mcap.dev/spec)
_OP_FOOTER, _OP_SCHEMA, _OP_CHANNEL, _OP_MESSAGE, _OP_CHUNK, _OP_DATA_END = 0x02, 0x03, 0x04, 0x05, 0x06, 0x0F
_RECORD_HEAD = struct.Struct("<BQ")        # opcode, body length
_MESSAGE_HEAD = struct.Struct("<HIQQ")     # channel id, sequence, log time, publish time
_CHUNK_HEAD = struct.Struct("<QQQI")       # start time, end time, uncompressed size, crc32
_U16, _U32, _U64 = struct.Struct("<H"), struct.Struct("<I"), struct.Struct("<Q")


class BagLock:
    """An exclusive, non-blocking flock on a bag directory, held while the bag is written or recovered."""

    def __init__(self, bag: Path) -> None:
        self.bag = bag
        self.fd: int | None = None

    def acquire(self) -> bool:
        """True when this process now holds the lock; False when another one does."""
        fd = os.open(self.bag, os.O_RDONLY)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return False
        self.fd = fd
        return True

    def release(self) -> None:
        if self.fd is not None:
            os.close(self.fd)   # closing the descriptor drops the flock
            self.fd = None


@dataclass
class BagRecovery:
    """What `recover_bag` found in a bag left open."""

    bag: Path
    messages: int = 0                                    # readable messages, now in the recovered bag
    topics: dict[str, int] = field(default_factory=dict)
    dropped_bytes: int = 0       # an unfinished record at the end of a file (the crash cut it off)
    orphan_messages: int = 0     # messages of a channel whose definition was not readable

    def summary(self) -> str:
        line = f"{self.bag.name}: {self.messages} messages recovered"
        if self.dropped_bytes:
            line += f", {self.dropped_bytes} bytes of an unfinished record dropped"
        if self.orphan_messages:
            line += f", {self.orphan_messages} messages of unknown channels dropped"
        return line


def is_left_open(path: Path) -> bool:
    """A directory with .mcap files and no metadata.yaml: a bag being written, or one left open."""
    return path.is_dir() and not (path / METADATA_FILE).exists() and any(path.glob("*.mcap"))


def recover_open_bags(paths: Iterable[Path | str],
                      on_error: Callable[[Path, DatasetError], None] | None = None) -> list[BagRecovery]:
    """Recover every bag left open among `paths`: bag directories, or directories holding bag
    directories (as `find_bags` reads them). Bags locked by their writer are skipped. A bag that
    cannot be recovered raises DatasetError, or goes to `on_error` and the others are still tried.
    """
    found: list[BagRecovery] = []
    for raw in paths:
        path = Path(raw)
        if not path.is_dir() or (path / METADATA_FILE).exists():
            continue
        candidates = [path] if is_left_open(path) else sorted(p for p in path.iterdir() if is_left_open(p))
        for bag in candidates:
            try:
                recovery = recover_bag(bag)
            except DatasetError as err:
                if on_error is None:
                    raise
                on_error(bag, err)
                continue
            if recovery is not None:
                found.append(recovery)
    return found


def recover_bag(bag: Path) -> BagRecovery | None:
    """Rewrite the readable part of an open bag's .mcap files as a complete bag with metadata.yaml,
    in place. None when another process holds the bag's lock (still recording) or the bag was
    closed meanwhile. Safe to repeat after a crash during recovery: metadata.yaml is written last.
    """
    lock = BagLock(bag)
    try:
        if not lock.acquire() or (bag / METADATA_FILE).exists():
            return None
        return _rewrite(bag)
    except OSError as err:   # permissions, disk full
        raise DatasetError(f"cannot recover {bag}, left open by a crash: {err}") from err
    except (struct.error, UnicodeDecodeError) as err:   # a complete record with a malformed body
        raise DatasetError(f"cannot recover {bag}: a malformed MCAP record ({err})") from err
    finally:
        lock.release()


def _rewrite(bag: Path) -> BagRecovery:
    sources = sorted(bag.glob("*.mcap"))
    staging = bag / RECOVERY_DIR
    shutil.rmtree(staging, ignore_errors=True)   # left by a recovery that crashed
    staging.mkdir()
    rewritten = staging / bag.name
    recovery = BagRecovery(bag)
    writer = Writer(rewritten, version=BAG_VERSION, storage_plugin=StoragePlugin.MCAP)
    writer.open()
    try:
        copier = _RecordCopier(writer, recovery)
        for source in sources:
            copier.copy_file(source)
        writer.set_custom_data(f"{CUSTOM_DATA_PREFIX}messages", str(recovery.messages))
        writer.set_custom_data(f"{CUSTOM_DATA_PREFIX}dropped_bytes", str(recovery.dropped_bytes))
        writer.close()
    except BaseException:
        writer.abort()
        shutil.rmtree(staging, ignore_errors=True)
        raise
    target = bag / f"{bag.name}.mcap"
    os.replace(rewritten / target.name, target)
    for source in sources:
        if source != target:
            source.unlink()
    os.replace(rewritten / METADATA_FILE, bag / METADATA_FILE)
    shutil.rmtree(staging, ignore_errors=True)
    return recovery


def _string(body: memoryview, pos: int) -> tuple[str, int]:
    (size,) = _U32.unpack_from(body, pos)
    return bytes(body[pos + 4:pos + 4 + size]).decode(), pos + 4 + size


class _Truncated(Exception):
    def __init__(self, offset: int) -> None:
        super().__init__(offset)
        self.offset = offset


def _records(data: memoryview, pos: int) -> Iterator[tuple[int, memoryview]]:
    """(opcode, body) of each complete record from `pos` on, up to the footer or DataEnd (the
    summary after them repeats what came before); raises _Truncated at a record that does not fit."""
    end = len(data)
    while pos < end:
        if pos + _RECORD_HEAD.size > end:
            raise _Truncated(pos)
        op, size = _RECORD_HEAD.unpack_from(data, pos)
        body_start = pos + _RECORD_HEAD.size
        if body_start + size > end:
            raise _Truncated(pos)
        if op in (_OP_FOOTER, _OP_DATA_END):
            return
        yield op, data[body_start:body_start + size]
        pos = body_start + size


class _RecordCopier:
    """Copies the messages of MCAP files into `writer`, with their channels' topics and types."""

    def __init__(self, writer: Writer, recovery: BagRecovery) -> None:
        self.writer = writer
        self.recovery = recovery
        self.typestore = get_typestore(Stores.ROS2_KILTED)
        self.connections: dict[tuple[str, str, str], Connection] = {}   # (topic, type, encoding)
        self.schemas: dict[int, tuple[str, str, str]] = {}               # per file: id -> (type, encoding, text)
        self.channels: dict[int, Connection] = {}                        # per file: channel id -> connection

    def copy_file(self, source: Path) -> None:
        data = source.read_bytes()
        if len(data) <= len(MCAP_MAGIC):   # killed before the header reached the file
            return
        if data[:len(MCAP_MAGIC)] != MCAP_MAGIC:
            raise DatasetError(f"{source} is not an MCAP file (no MCAP magic); cannot recover it")
        self.schemas, self.channels = {}, {}
        try:
            for op, body in _records(memoryview(data), len(MCAP_MAGIC)):
                self._copy(op, body, source)
        except _Truncated as cut:
            self.recovery.dropped_bytes += len(data) - cut.offset

    def _copy(self, op: int, body: memoryview, source: Path) -> None:
        if op == _OP_MESSAGE:
            channel_id, _, log_time, _ = _MESSAGE_HEAD.unpack_from(body)
            connection = self.channels.get(channel_id)
            if connection is None:
                self.recovery.orphan_messages += 1
                return
            self.writer.write(connection, log_time, bytes(body[_MESSAGE_HEAD.size:]))
            self.recovery.messages += 1
            self.recovery.topics[connection.topic] = self.recovery.topics.get(connection.topic, 0) + 1
        elif op == _OP_CHUNK:
            for inner_op, inner_body in self._chunk_records(body, source):
                self._copy(inner_op, inner_body, source)
        elif op == _OP_SCHEMA:
            (schema_id,) = _U16.unpack_from(body)
            name, pos = _string(body, 2)
            encoding, pos = _string(body, pos)
            (size,) = _U32.unpack_from(body, pos)
            self.schemas[schema_id] = (name, encoding, bytes(body[pos + 4:pos + 4 + size]).decode())
        elif op == _OP_CHANNEL:
            channel_id, schema_id = struct.unpack_from("<HH", body)
            topic, pos = _string(body, 4)
            encoding, _ = _string(body, pos)
            schema = self.schemas.get(schema_id)
            if schema is not None:
                self.channels[channel_id] = self._connection(topic, schema, encoding or "cdr")

    @staticmethod
    def _chunk_records(body: memoryview, source: Path) -> Iterator[tuple[int, memoryview]]:
        _, _, uncompressed_size, crc = _CHUNK_HEAD.unpack_from(body)
        compression, pos = _string(body, _CHUNK_HEAD.size)
        (records_size,) = _U64.unpack_from(body, pos)
        pos += _U64.size
        try:
            inner = decompress(bytes(body[pos:pos + records_size]), compression, uncompressed_size, crc)
            yield from _records(memoryview(inner), 0)
        except _Truncated:
            raise DatasetError(f"{source}: a complete chunk holds a cut-off record; the file is corrupt") from None
        except Exception as err:  # rosbags raises several kinds for chunks it cannot decode
            raise DatasetError(f"{source}: a complete chunk does not decode ({err}); the file is corrupt") from None

    def _connection(self, topic: str, schema: tuple[str, str, str], encoding: str) -> Connection:
        msgtype, schema_encoding, definition = schema
        key = (topic, msgtype, encoding)
        if key not in self.connections:
            if msgtype not in self.typestore.types:
                self._register(msgtype, schema_encoding, definition)
            self.connections[key] = self.writer.add_connection(topic, msgtype, typestore=self.typestore,
                                                               serialization_format=encoding)
        return self.connections[key]

    def _register(self, msgtype: str, encoding: str, definition: str) -> None:
        try:
            types = get_types_from_idl(definition) if encoding == "ros2idl" else get_types_from_msg(definition, msgtype)
            self.typestore.register(types)
        except Exception as err:  # rosbags raises several kinds for definitions it cannot parse
            raise DatasetError(f"cannot read the definition of {msgtype} in a bag left open: {err}") from None
