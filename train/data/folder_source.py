"""`folder:PATH`: an image folder, or a .tar, .tar.gz/.tgz or .zip archive.

Layout: `PATH/<split>/<class>/<image>`, images in PNG or JPEG (`.png`, `.jpg`,
`.jpeg`, any case), all of the same height and width. Inside an archive the
same layout may sit under one top-level folder (`cifar10/train/cat/0.png`).
Classes are the class folder names of all splits, in sorted order, so the
labels agree between splits. Images are converted to RGB. Hidden files and
folders (`.name`, `__MACOSX`) and files that are not images are ignored.

Decoding is done once: all splits are decoded in one pass and stored together
in an uncompressed `.npz` file in the cache directory, named by the sha256 of
the archive (or, for a folder, of its image files' names, sizes and
modification times), so a changed archive or folder is decoded again.
"""

from collections.abc import Iterable, Iterator
import dataclasses
import io
import logging
import os
from pathlib import Path
from pathlib import PurePosixPath
import re
import tarfile
import zipfile
import zlib

import numpy as np
from PIL import Image

from train.data import cache
from train.data.split import DataError
from train.data.split import DataNotFoundError
from train.data.split import Split

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
# Bump when the decoded arrays would change, so old cache files are not used.
_DECODER_VERSION = "1"
_EXPECTED_LAYOUT = "PATH/<split>/<class>/<image>.png|.jpg"
_ARCHIVE_ERRORS = (OSError, EOFError, tarfile.TarError, zipfile.BadZipFile,
                   zlib.error)


@dataclasses.dataclass(frozen=True)
class FolderLayout:
  """Which image file belongs to which split and class.

  Attributes:
    class_names: the sorted class folder names of all splits.
    members: for each split, its image files (names as stored in the folder or
      archive) in the order of the examples: by class, then by name.
    labels: for each split, the label of each of `members[split]`.
  """

  class_names: tuple[str, ...]
  members: dict[str, tuple[str, ...]]
  labels: dict[str, np.ndarray]

  @property
  def split_names(self) -> tuple[str, ...]:
    return tuple(sorted(self.members))


def load_folder_split(path_spec: str, split: str, *,
                      cache_dir: str | os.PathLike | None = None) -> Split:
  """Loads one split of an image folder or archive, decoding it at most once.

  Args:
    path_spec: the part of the source after `folder:`, a folder or an archive.
    split: the split folder's name, e.g. `train` or `test`.
    cache_dir: where decoded arrays are cached (None: the default cache).

  Returns:
    The split, with labels in the sorted order of the class folder names.
  """
  path = _existing_path(path_spec)
  kind = _storage_kind(path)
  source = f"folder:{path_spec}"
  listing = None
  if kind == "directory":  # Its key is its files' names, sizes and times.
    listing = _list_storage(path, kind)
    key = [_DECODER_VERSION] + _file_signatures(path, listing[0])
  else:  # An archive's key is its contents: no need to list it on a hit.
    key = [_DECODER_VERSION, cache.digest_of_file(path)]
  cache_path = (cache.resolve_cache_dir(cache_dir) / "folder" /
                f"{_safe_file_name(path.name)}-"
                f"{cache.digest_of_strings(key)[:32]}.npz")
  cached = _load_cached_split(cache_path, path, split, source)
  if cached is not None:
    return cached
  files, dirs = listing or _list_storage(path, kind)
  layout = parse_layout(files, dirs, where=str(path))
  if split not in layout.members:
    raise _missing_split_error(path, split, layout.split_names)
  logging.info("Decoding the %d images of %s once; caching them in %s.",
               sum(map(len, layout.members.values())), path, cache_path)
  arrays = decode_layout(path, kind, layout)
  cache.save_arrays(cache_path, _arrays_for_cache(layout, arrays))
  images, labels = arrays[split]
  return Split(images=images, labels=labels,
               num_classes=len(layout.class_names),
               class_names=layout.class_names, source=source, split=split)


def _existing_path(path_spec: str) -> Path:
  """The path named by a folder source, which must exist."""
  if not path_spec:
    raise DataError("folder source without a path: use folder:PATH with PATH "
                    "a folder or a .tar, .tar.gz, .tgz or .zip archive.")
  path = Path(path_spec).expanduser()
  if not path.exists():
    raise DataNotFoundError(
        f"folder source: {path} does not exist. Expected a folder laid out as "
        f"{_EXPECTED_LAYOUT} or a .tar, .tar.gz, .tgz or .zip archive of one.")
  return path


def _storage_kind(path: Path) -> str:
  """`directory`, `zip` or `tar` (any compression tarfile reads)."""
  if path.is_dir():
    return "directory"
  if zipfile.is_zipfile(path):
    return "zip"
  try:
    if tarfile.is_tarfile(path):
      return "tar"
  except _ARCHIVE_ERRORS:
    pass
  raise DataError(f"folder source: {path} is neither a folder nor a readable "
                  ".tar, .tar.gz, .tgz or .zip archive.")


def _safe_file_name(name: str) -> str:
  """A file name made only of characters that are safe everywhere."""
  return re.sub(r"[^A-Za-z0-9._-]", "_", name)[:64]


def _normalized(name: str) -> str:
  """An archive member's name without `./`, leading `/` or trailing `/`."""
  parts = [part for part in PurePosixPath(name).parts if part not in ("/", ".")]
  return "/".join(parts)


def _is_hidden(name: str) -> bool:
  """Whether a path has a hidden component (`.x`, `__MACOSX`)."""
  return any(part.startswith((".", "__MACOSX")) for part in name.split("/"))


def _is_image_name(name: str) -> bool:
  return name.lower().endswith(IMAGE_SUFFIXES) and not _is_hidden(name)


def _list_storage(path: Path, kind: str) -> tuple[list[str], list[str]]:
  """The image files and the folders of a folder or archive.

  Args:
    path: the folder or archive.
    kind: as returned by `_storage_kind`.

  Returns:
    `(files, dirs)`: normalized relative names of the image files and of the
    folders (folders an archive lists explicitly, or all folders of a folder).
  """
  try:
    if kind == "directory":
      files, dirs = [], []
      for root, dir_names, file_names in os.walk(path, followlinks=True):
        relative_root = Path(root).relative_to(path).as_posix()
        prefix = "" if relative_root == "." else relative_root + "/"
        dirs.extend(prefix + name for name in dir_names)
        files.extend(prefix + name for name in file_names)
    elif kind == "zip":
      with zipfile.ZipFile(path) as archive:
        infos = archive.infolist()
      files = [_normalized(i.filename) for i in infos if not i.is_dir()]
      dirs = [_normalized(i.filename) for i in infos if i.is_dir()]
    else:
      with tarfile.open(path, "r:*") as archive:
        infos = archive.getmembers()
      files = [_normalized(info.name) for info in infos if info.isfile()]
      dirs = [_normalized(info.name) for info in infos if info.isdir()]
  except _ARCHIVE_ERRORS as err:
    raise DataError(f"Cannot read {path}: {err}. Is the archive complete? "
                    "Copy or download it again.") from err
  return ([name for name in files if _is_image_name(name)],
          [name for name in dirs if name and not _is_hidden(name)])


def _file_signatures(root: Path, files: Iterable[str]) -> list[str]:
  """`name size mtime` of each file: a folder's cache key."""
  signatures = []
  for name in sorted(files):
    stat = (root / name).stat()
    signatures.append(f"{name}\t{stat.st_size}\t{stat.st_mtime_ns}")
  return signatures


def parse_layout(files: Iterable[str], dirs: Iterable[str], *,
                 where: str) -> FolderLayout:
  """Assigns image files to splits and classes by their folders.

  Args:
    files: normalized relative names of the image files.
    dirs: normalized relative names of folders (to find empty class folders).
    where: the folder or archive, for error messages.

  Returns:
    The layout: class names, and each split's files and labels.
  """
  files = sorted(files)
  if not files:
    raise DataError(f"{where} contains no PNG or JPEG images. Expected the "
                    f"layout {_EXPECTED_LAYOUT}.")
  files_parts = [name.split("/") for name in files]
  top_folders = {parts[0] for parts in files_parts}
  strip = int(len(top_folders) == 1 and
              all(len(parts) >= 4 for parts in files_parts))
  by_split = {}
  for name, parts in zip(files, files_parts):
    parts = parts[strip:]
    if len(parts) != 3:
      raise DataError(
          f"{where}: image {name} is not at <split>/<class>/<image>; expected "
          f"the layout {_EXPECTED_LAYOUT} (point folder: at the folder that "
          "holds the split folders).")
    split, class_name, _ = parts
    by_split.setdefault(split, {}).setdefault(class_name, []).append(name)
  _check_no_empty_class_folder(dirs, by_split, strip, where)
  class_names = tuple(sorted(set().union(*by_split.values())))
  label_of = {name: label for label, name in enumerate(class_names)}
  members, labels = {}, {}
  for split, classes in by_split.items():
    ordered = [(member, label_of[class_name])
               for class_name in sorted(classes)
               for member in sorted(classes[class_name])]
    members[split] = tuple(member for member, _ in ordered)
    labels[split] = np.array([label for _, label in ordered], np.int32)
  return FolderLayout(class_names=class_names, members=members, labels=labels)


def _check_no_empty_class_folder(dirs, by_split, strip, where) -> None:
  """Raises a DataError naming a class folder that holds no image."""
  for name in sorted(dirs):
    parts = name.split("/")[strip:]
    if len(parts) == 2 and parts[1] not in by_split.get(parts[0], {}):
      raise DataError(
          f"{where}: the class folder {name} contains no PNG or JPEG image. "
          "Remove it, or add its images.")


def _missing_split_error(path: Path, split: str, found) -> DataNotFoundError:
  return DataNotFoundError(
      f"{path} has no split {split!r}; splits found: {', '.join(found)}. "
      f"Expected the layout {_EXPECTED_LAYOUT}.")


def decode_layout(path: Path, kind: str, layout: FolderLayout
                  ) -> dict[str, tuple[np.ndarray, np.ndarray]]:
  """Decodes every image of every split in one pass over the storage.

  Args:
    path: the folder or archive.
    kind: as returned by `_storage_kind`.
    layout: the files to decode, as returned by `parse_layout`.

  Returns:
    For each split, `(images, labels)`: uint8 `(N, H, W, 3)` and int32 `(N,)`.
  """
  slot_of = {member: (split, index)
             for split, members in layout.members.items()
             for index, member in enumerate(members)}
  images = {}
  first_member, first_shape = None, None
  for member, data in _read_files(path, kind, slot_of):
    image = decode_image(data, f"{path}:{member}" if kind != "directory"
                         else str(path / member))
    if first_member is None:
      first_member, first_shape = member, image.shape
      images = {split: np.empty((len(members), *image.shape), np.uint8)
                for split, members in layout.members.items()}
    elif image.shape != first_shape:
      raise DataError(
          f"{path}: image {member} is {_size(image.shape)} but {first_member} "
          f"is {_size(first_shape)}; all images must have the same size. "
          "Resize them, or remove the odd ones.")
    split, index = slot_of.pop(member)
    images[split][index] = image
  if slot_of:
    raise DataError(f"{path}: could not read {sorted(slot_of)[0]} (and "
                    f"{len(slot_of) - 1} more image files).")
  return {split: (images[split], layout.labels[split]) for split in images}


def _size(shape) -> str:
  return f"{shape[1]}x{shape[0]} (width x height)"


def decode_image(data: bytes, name: str) -> np.ndarray:
  """Decodes a PNG or JPEG file to a uint8 RGB array `(H, W, 3)`.

  Args:
    data: the file's bytes.
    name: the file's name, for the error message.

  Returns:
    The image.
  """
  try:
    with Image.open(io.BytesIO(data), formats=("PNG", "JPEG")) as image:
      if image.mode != "RGB":
        image = image.convert("RGB")
      return np.asarray(image)
  except Exception as err:  # PIL raises many types for bad files.
    raise DataError(f"Cannot decode the image {name}: {err}. Replace or "
                    "remove the file.") from err


def _read_files(path: Path, kind: str, wanted) -> Iterator[tuple[str, bytes]]:
  """Yields `(name, bytes)` of the wanted files, in storage order.

  Args:
    path: the folder or archive.
    kind: as returned by `_storage_kind`.
    wanted: a container of normalized names.

  Yields:
    Each wanted file once; an archive is read front to back, once.
  """
  try:
    if kind == "directory":
      for name in sorted(wanted):
        yield name, (path / name).read_bytes()
    elif kind == "zip":
      with zipfile.ZipFile(path) as archive:
        for info in archive.infolist():
          name = _normalized(info.filename)
          if name in wanted and not info.is_dir():
            yield name, archive.read(info)
    else:
      with tarfile.open(path, "r:*") as archive:
        for info in archive:
          name = _normalized(info.name)
          if name in wanted and info.isfile():
            yield name, archive.extractfile(info).read()
  except _ARCHIVE_ERRORS as err:
    raise DataError(f"Cannot read {path}: {err}. Is the archive complete? "
                    "Copy or download it again.") from err


def _arrays_for_cache(layout: FolderLayout, arrays) -> dict[str, np.ndarray]:
  """The arrays of all splits, named for the cache file."""
  stored = {"split_names": np.array(layout.split_names, dtype=str),
            "class_names": np.array(layout.class_names, dtype=str)}
  for index, split in enumerate(layout.split_names):
    stored[f"images_{index}"], stored[f"labels_{index}"] = arrays[split]
  return stored


def _load_cached_split(cache_path: Path, path: Path, split: str, source: str
                       ) -> Split | None:
  """The split from the cache file, or None when the cache has no copy."""
  names = cache.load_arrays(cache_path, ["split_names", "class_names"])
  if names is None:
    return None
  split_names = [str(name) for name in names["split_names"]]
  if split not in split_names:
    raise _missing_split_error(path, split, split_names)
  index = split_names.index(split)
  arrays = cache.load_arrays(cache_path, [f"images_{index}", f"labels_{index}"])
  if arrays is None:
    return None
  class_names = tuple(str(name) for name in names["class_names"])
  return Split(images=arrays[f"images_{index}"],
               labels=arrays[f"labels_{index}"],
               num_classes=len(class_names), class_names=class_names,
               source=source, split=split)
