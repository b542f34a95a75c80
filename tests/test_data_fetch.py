"""Class prep: ``data fetch`` offline fails at once with one line naming the
hosts it could not reach; ``data list`` shows what is present and whether checksums still match."""
from __future__ import annotations

import json

from kdengine import cli
from kdengine.data import fetch as fetch_mod


def test_offline_fetch_fails_with_one_line_naming_the_hosts(runs_dir, monkeypatch, capsys):
    # ".invalid" never resolves (RFC 2606), so this is offline on any machine
    monkeypatch.setitem(fetch_mod.SOURCES, "mnist", ["https://mnist-mirror.invalid/mnist/"])
    monkeypatch.setitem(fetch_mod.SOURCES, "cifar10", ["http://cifar.invalid/c.tar.gz"])
    assert cli.main(["data", "fetch", "mnist", "cifar10"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0, err                              # one line, no traceback
    assert "could not reach cifar.invalid, mnist-mirror.invalid" in err and "mnist, cifar10" in err
    assert not (runs_dir / "data" / "MNIST").exists()


def test_unknown_set_is_refused(runs_dir, capsys):
    assert cli.main(["data", "fetch", "imagenet"]) == 2
    assert "unknown data set 'imagenet'" in capsys.readouterr().err


def test_list_shows_present_sets_and_checksums(runs_dir, capsys):
    root = runs_dir / "data"
    for f in fetch_mod.FILES["mnist"]:
        (root / f).parent.mkdir(parents=True, exist_ok=True)
        (root / f).write_bytes(f.encode() * 1000)
    manifest = {"mnist": {f: fetch_mod._sha256(root / f) for f in fetch_mod.FILES["mnist"]}}
    (root / fetch_mod.MANIFEST).write_text(json.dumps(manifest))
    already: list[str] = []
    fetch_mod.fetch(["mnist"], root, say=already.append)          # present: nothing to reach
    assert already == [f"mnist: already present in {root}"]
    assert cli.main(["data", "list"]) == 0
    out = capsys.readouterr().out
    assert "mnist          present" in out and "checksums ok" in out
    assert "cifar10        missing" in out and "fashion_mnist  missing" in out
    (root / fetch_mod.FILES["mnist"][0]).write_bytes(b"changed")
    cli.main(["data", "list"])
    assert "CHECKSUMS DIFFER" in capsys.readouterr().out
