"""`python -m studio generate`: writes PNGs with their parameters, prints seeds, explains bad input."""
import os
import subprocess
import sys
from pathlib import Path

from PIL import Image

from studio import metadata
from studio.__main__ import main

ROOT = Path(__file__).resolve().parent.parent


def test_the_documented_command_writes_a_png_and_prints_its_seed(sd1_dir, tmp_path):
    out = tmp_path / "cat.png"
    done = subprocess.run(
        [sys.executable, "-m", "studio", "generate", "--prompt", "a red cat", "--out", str(out),
         "--model", str(sd1_dir), "--steps", "3", "--seed", "42"],
        cwd=ROOT, capture_output=True, text=True, timeout=300, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert done.returncode == 0, done.stderr
    assert f"{out}  seed=42" in done.stdout
    assert "denoising" in done.stderr  # the tqdm progress bar
    parameters = metadata.parse_parameters(Image.open(out).info["parameters"])
    assert parameters["Prompt"] == "a red cat" and parameters["Seed"] == "42" and parameters["Steps"] == "3"


def test_a_batch_writes_one_file_per_image_with_consecutive_seeds(sd1_dir, tmp_path, capsys):
    code = main(["generate", "--prompt", "a dog", "--out", str(tmp_path / "dog.png"), "--model", str(sd1_dir),
                 "--steps", "2", "--seed", "7", "--batch", "2"])
    assert code == 0
    printed = capsys.readouterr().out
    assert "dog-0.png  seed=7" in printed and "dog-1.png  seed=8" in printed
    assert Image.open(tmp_path / "dog-1.png").size == (64, 64)


def test_batch_count_runs_batches_in_a_row_numbering_files_and_seeds_on(sd1_dir, tmp_path, capsys):
    code = main(["generate", "--prompt", "a dog", "--out", str(tmp_path / "dog.png"), "--model", str(sd1_dir),
                 "--steps", "2", "--seed", "7", "--batch", "2", "--batch-count", "2"])
    assert code == 0
    printed = capsys.readouterr().out
    for index, seed in enumerate(range(7, 11)):
        assert f"dog-{index}.png  seed={seed}" in printed
        assert metadata.parse_parameters(Image.open(tmp_path / f"dog-{index}.png").info["parameters"])["Seed"] == str(seed)


def test_a_bad_batch_count_is_one_clear_line(sd1_dir, tmp_path, capsys):
    code = main(["generate", "--prompt", "x", "--out", str(tmp_path / "x.png"), "--model", str(sd1_dir),
                 "--batch-count", "0"])
    assert code == 2
    assert "batch_count=0 is not allowed" in capsys.readouterr().err
    assert not list(tmp_path.iterdir())


def test_img2img_from_the_command_line(sd1_dir, tmp_path, capsys):
    start = tmp_path / "start.png"
    Image.new("RGB", (100, 80), "red").save(start)
    code = main(["generate", "--prompt", "a blue square", "--out", str(tmp_path / "out.png"), "--model",
                 str(sd1_dir), "--steps", "4", "--strength", "0.5", "--init-image", str(start), "--seed", "1"])
    assert code == 0
    parameters = metadata.parse_parameters(Image.open(tmp_path / "out.png").info["parameters"])
    assert parameters["Denoising strength"] == "0.5"


def test_bad_input_is_one_clear_line_and_exit_status_2(sd1_dir, tmp_path, capsys):
    code = main(["generate", "--prompt", "x", "--out", str(tmp_path / "x.png"), "--model", str(sd1_dir),
                 "--steps", "0"])
    assert code == 2
    err = capsys.readouterr().err
    assert "error: num_inference_steps=0 is not allowed" in err and "Traceback" not in err
    assert not (tmp_path / "x.png").exists()


def test_a_missing_model_is_one_clear_line(tmp_path, capsys):
    code = main(["generate", "--prompt", "x", "--out", str(tmp_path / "x.png"), "--model", "../../etc/passwd"])
    assert code == 2
    assert "model='../../etc/passwd'" in capsys.readouterr().err


def test_trajectory_folder_gets_every_step_a_gif_and_a_contact_sheet(sd1_dir, tmp_path, capsys):
    code = main(["generate", "--prompt", "a cat", "--out", str(tmp_path / "cat.png"), "--model", str(sd1_dir),
                 "--steps", "3", "--preview", "fast", "--trajectory", str(tmp_path / "steps")])
    assert code == 0
    names = {p.name for p in (tmp_path / "steps").iterdir()}
    assert {"step_001_xt.png", "step_003_x0.png", "trajectory.gif", "contact_sheet.png",
            "run.json", "run.safetensors", "picture-0.png"} <= names  # the run, to open again (test_runs.py)
    assert "trajectory: 11 files" in capsys.readouterr().out


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "studio", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=120, env={**os.environ, "HF_HUB_OFFLINE": "1"})


def test_help_and_argument_errors_answer_without_loading_torch_or_diffusers():
    # (importing them took 13 s on a busy machine before --help could answer)
    probe = ("import sys\nfrom studio.__main__ import main\ntry:\n    main(['generate', '--help'])\n"
             "except SystemExit:\n    pass\nprint(sorted({'torch', 'diffusers', 'gradio'} & set(sys.modules)))")
    done = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().endswith("[]")
    assert "--guidance-scale" in done.stdout


def test_a_value_argparse_rejects_is_one_line_naming_it():
    done = run_cli("generate", "--prompt", "x", "--out", "x.png", "--steps", "abc")
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        "error: argument --steps: invalid int value: 'abc' (see python -m studio generate --help)"]
    assert not (ROOT / "x.png").exists()
