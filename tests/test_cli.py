import json

from panoptix.cli import main


def test_synth_evaluate_viz(tmp_path, capsys):
    data = tmp_path / "data"
    assert main(["synth", "--out", str(data), "--train", "2", "--val", "4", "--size", "64", "--workers", "1"]) == 0
    ann = data / "annotations"
    assert main(["perturb", "--gt-json", str(ann / "panoptic_val.json"), "--out-json", str(tmp_path / "p.json"),
                 "--out-dir", str(tmp_path / "p")]) == 0
    assert main(["evaluate", "--gt-json", str(ann / "panoptic_val.json"), "--pred-json", str(tmp_path / "p.json"),
                 "--workers", "2", "--out", str(tmp_path / "r.json")]) == 0
    out = capsys.readouterr().out
    assert "Things" in out and "4 images" in out
    res = json.loads((tmp_path / "r.json").read_text())
    assert 0 < res["All"]["pq"] < 1 and set(res) >= {"All", "Things", "Stuff", "per_class"}
    assert main(["viz", "--gt-json", str(ann / "panoptic_val.json"), "--images", str(data / "val"),
                 "--pred-json", str(tmp_path / "p.json"), "--pred-dir", str(tmp_path / "p"),
                 "--out", str(tmp_path / "viz"), "--labels"]) == 0
    assert len(list((tmp_path / "viz").glob("*.png"))) == 4


def test_evaluate_reports_bad_input_without_traceback(tmp_path, capsys):
    (tmp_path / "gt.json").write_text("{")
    assert main(["evaluate", "--gt-json", str(tmp_path / "gt.json"), "--pred-json", str(tmp_path / "gt.json")]) == 2
    err = capsys.readouterr().err
    assert "error:" in err and "malformed JSON" in err and "Traceback" not in err
