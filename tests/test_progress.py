import io

import pytest

from jaxpurify.progress import Progress, progress


class FakeTerminal(io.StringIO):
    def isatty(self):
        return True


def test_plain_lines_when_not_a_terminal():
    out = io.StringIO()
    with Progress(total=50, desc="train", stream=out, interval=1e9) as bar:
        for i in range(50):
            bar.update(1, loss=1.0 / (i + 1))
    text = out.getvalue()
    assert "\r" not in text and "\x1b" not in text
    lines = text.splitlines()
    # one line per tenth of the total, the last one not repeated at close
    assert [ln.split()[1] for ln in lines] == [f"{5 * k}/50" for k in range(1, 11)]
    assert all(ln.startswith("train: ") for ln in lines)
    assert lines[-1].endswith("loss=0.02")


def test_progress_yields_every_item_and_reports_the_count():
    out = io.StringIO()
    items = list(progress(["a", "b", "c"], desc="sweep", stream=out))
    assert items == ["a", "b", "c"]
    assert out.getvalue().splitlines()[-1].startswith("sweep: 3/3 ")


def test_unknown_total_prints_the_final_count():
    out = io.StringIO()
    assert sum(progress((i for i in range(7)), stream=out)) == 21
    assert out.getvalue().split()[0] == "7"


@pytest.mark.parametrize("env", [None, "0"])
def test_silenced(monkeypatch, env):
    out = FakeTerminal()
    if env is None:
        kw = {"disable": True}
    else:
        monkeypatch.setenv("JAXPURIFY_PROGRESS", env)
        kw = {}
    with Progress(total=5, desc="x", stream=out, **kw) as bar:
        for _ in range(5):
            bar.update(1, loss=0.5)
    assert bar.count == 5
    assert out.getvalue() == ""


def test_rich_bar_on_a_terminal():
    out = FakeTerminal()
    with Progress(total=4, desc="train", stream=out) as bar:
        for _ in range(4):
            bar.update(1, loss=0.25)
    text = out.getvalue()
    assert "4/4" in text and "train" in text and "loss=0.25" in text
    # a drawn bar (rich's bar glyph), not the plain "train: 4/4 …" lines of a redirected stream
    assert "━" in text and "train:" not in text


def test_negative_total_raises():
    with pytest.raises(ValueError, match="total"):
        Progress(total=-1)
