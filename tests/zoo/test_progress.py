"""uws_core.zoo.progress: bars only for a person at a terminal, and they never change a trained number."""
import io
import sys

from uws_core.zoo import progress


class _Tty(io.StringIO):
    def isatty(self):
        return True


def test_bars_are_off_in_a_pipe_and_with_UWS_PROGRESS_0(monkeypatch):
    monkeypatch.setattr(sys, "stderr", io.StringIO())
    monkeypatch.delenv("UWS_PROGRESS", raising=False)
    assert not progress.enabled()
    with progress.bar(3, "x") as b:
        b.update(3)
    assert sys.stderr.getvalue() == ""
    monkeypatch.setattr(sys, "stderr", _Tty())
    assert progress.enabled()
    monkeypatch.setenv("UWS_PROGRESS", "0")
    assert not progress.enabled()


def test_a_bar_on_a_terminal_names_the_population_and_sits_in_its_worker_slot(monkeypatch):
    tty = _Tty()
    monkeypatch.setattr(sys, "stderr", tty)
    monkeypatch.delenv("UWS_PROGRESS", raising=False)
    progress.set_slot(1)
    try:
        with progress.labelled("vit/seed1"):
            with progress.bar(4, "finetune") as b:
                assert b.pos in (3, -3)  # slot 1, level 0: terminal line 1 + 2 * 1
                b.update(4)
            with progress.bar(None, "steps", level=1) as b:
                assert abs(b.pos) == 4
    finally:
        progress.set_slot(None)
    assert "vit/seed1 finetune" in tty.getvalue()
    with progress.bar(1, "alone") as b:
        assert not b.disable and b.desc == "alone"


def test_tiny_vit_weights_are_the_same_with_and_without_bars(tmp_path, monkeypatch):
    from uws_core.weights.fingerprints import population_fingerprint
    from uws_core.zoo.vit_zoo import VitZooConfig, build_vit_populations

    monkeypatch.delenv("UWS_PROGRESS", raising=False)
    fps = []
    for tty, where in ((False, "off"), (True, "on")):
        monkeypatch.setattr(sys, "stderr", _Tty() if tty else io.StringIO())
        fps.append(population_fingerprint(build_vit_populations(VitZooConfig.tiny(), tmp_path / where).root))
        assert ("steps" in sys.stderr.getvalue()) == tty
    assert fps[0] == fps[1]
