"""Small HTML pieces shared by the report, the notebook displays and the data display: escaping, tables, inlined
images and figures. Nothing here knows about runs or models (so low layers such as data/ may use it)."""
from __future__ import annotations

import base64
import html
import io
import tempfile
from pathlib import Path
from typing import Any, Callable, Sequence

from PIL import Image

THUMB = 128  # side of the image tiles, in pixels
#: the style of the notebook displays' blocks
STYLE = ("<style>.gv-grid{display:flex;flex-wrap:wrap;gap:.5rem}.gv-tile{width:160px;font-size:.75rem}"
         ".gv-tile img{width:160px}.gv-ok{color:#1b7f3b}.gv-bad{color:#b00020}</style>")


def esc(x: Any) -> str:
    return html.escape(str(x), quote=True)


def section(title: str, body: str, anchor: str = "") -> str:
    ident = f' id="{esc(anchor)}"' if anchor else ""
    return f"<section{ident}><h2>{esc(title)}</h2>\n{body}\n</section>"


def note(text: str) -> str:
    return f'<p class="note">{esc(text)}</p>'


def table(header: Sequence[str] | None, rows: Sequence[Sequence[Any]], cls: str = "") -> str:
    head = "<thead><tr>" + "".join(f"<th>{esc(h)}</th>" for h in header) + "</tr></thead>" if header else ""
    body = "".join("<tr>" + "".join(f"<td>{esc(fmt(v))}</td>" for v in r) + "</tr>" for r in rows)
    return f'<table class="{esc(cls)}">{head}<tbody>{body}</tbody></table>'


def fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4f}" if abs(v) < 1000 else f"{v:.1f}"
    return "" if v is None else str(v)


def data_uri(data: bytes, mime: str) -> str:
    return f"data:{mime};base64,{base64.b64encode(data).decode('ascii')}"


def img_tag(image: Image.Image | bytes, alt: str, cls: str = "", jpeg: bool = False) -> str:
    """An <img> with the picture inlined (PNG bytes as given; PIL images as PNG, or JPEG with ``jpeg``)."""
    if isinstance(image, Image.Image):
        buf = io.BytesIO()
        if jpeg:
            image.convert("RGB").save(buf, format="JPEG", quality=88)
        else:
            image.save(buf, format="PNG")
        data, mime = buf.getvalue(), "image/jpeg" if jpeg else "image/png"
    else:
        data, mime = image, "image/png"
    return f'<img class="{esc(cls)}" alt="{esc(alt)}" src="{data_uri(data, mime)}">'


def figure_png(draw: Callable[[Path], None]) -> bytes | None:
    """PNG bytes of a figure that ``draw(path)`` saves (the plots module writes files); None if nothing was drawn."""
    with tempfile.TemporaryDirectory() as tmp:
        p = Path(tmp) / "figure.png"
        draw(p)
        return p.read_bytes() if p.exists() else None


def thumbnail(img: Image.Image, side: int = THUMB) -> Image.Image:
    im = img.convert("RGB")
    if max(im.size) > side:
        im.thumbnail((side, side), Image.BILINEAR)
    elif max(im.size) < side:  # small images (32 px CIFAR) are scaled up so that they can be seen
        k = side / max(im.size)
        im = im.resize((max(1, round(im.width * k)), max(1, round(im.height * k))), Image.NEAREST)
    return im


def block(kind: str, title: str, *parts: str) -> str:
    """A notebook display: a titled <div class="gapvision-KIND"> of ``parts``."""
    return f'{STYLE}<div class="gapvision-{kind}"><h3>{esc(title)}</h3>{"".join(p for p in parts if p)}</div>'


def inline_figure(draw: Callable[[Any], None], alt: str, jpeg: bool = False) -> str:
    """An inline <img> of a figure that ``draw(path)`` saves; ``jpeg`` for photos (noisy pixels make PNGs big)."""
    png = figure_png(draw)
    if not png:
        return ""
    return img_tag(Image.open(io.BytesIO(png)), alt, "gv-figure", jpeg=True) if jpeg else img_tag(png, alt, "gv-figure")
