from pathlib import Path

from fluxfill.bridge import file_head, png_repair


def test_a_file_is_read_whole_only_when_its_head_says_so(tmp_path: Path) -> None:
    png = tmp_path / "photo.png"
    png.write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 10)
    other = tmp_path / "clip.mp4"
    other.write_bytes(bytes(4096))
    heads: list[bytes] = []

    def is_png(head: bytes) -> bool:
        heads.append(head)
        return png_repair.is_png(head)

    assert file_head.bytes_if(png, is_png) == png.read_bytes()
    assert file_head.bytes_if(other, is_png) == b""
    assert [len(head) for head in heads] == [file_head.HEAD_SIZE, file_head.HEAD_SIZE]


def test_a_file_shorter_than_the_head_or_unreadable_gives_what_there_is(tmp_path: Path) -> None:
    short = tmp_path / "short.png"
    short.write_bytes(b"\x89PNG\r\n\x1a\n")
    assert file_head.bytes_if(short, png_repair.is_png) == short.read_bytes()
    assert file_head.bytes_if(tmp_path / "missing.png", png_repair.is_png) == b""
    assert file_head.bytes_if(tmp_path, png_repair.is_png) == b""  # a folder
