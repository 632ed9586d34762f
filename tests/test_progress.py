"""Progress in a log: lines when there is no terminal (pytest captures output, so there is none here)."""

from torch_imdb.progress import Progress


def test_lines_at_each_tenth_of_a_known_total():
    lines = []
    with Progress(25, "epoch 1/1", "batches", lines.append) as p:
        for step in range(25):
            p.update(1, f"loss {1 / (step + 1):.2f}")
    assert [line.split(" (")[0] for line in lines] == [
        f"epoch 1/1: {k}/25 batches, loss {1 / k:.2f}" for k in range(3, 25, 3)]


def test_lines_every_interval_when_the_total_is_unknown(monkeypatch):
    import torch_imdb.progress as progress

    clock = iter([0.0, 10.0, 31.0, 40.0, 62.0, 70.0])
    monkeypatch.setattr(progress.time, "perf_counter", lambda: next(clock))
    lines = []
    p = Progress(None, "explaining on Ray", "reviews", lines.append, interval=30.0)
    for n in (100, 200, 300, 400, 500):
        p.update(n)
    p.close()
    assert lines == ["explaining on Ray: 300 reviews (31 s)", "explaining on Ray: 1000 reviews (62 s)"]


def test_disabled_progress_says_nothing():
    lines = []
    p = Progress(10, "x", "", lines.append, enabled=False)
    p.update(10)
    p.close()
    assert lines == []
