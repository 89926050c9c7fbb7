"""The README's "Understanding a run" pictures, made again from the bundled model:

    python -m benchmarks.pictures [--out docs]

branch.png (a run and its branch with a new prompt after step 3), lens.png (x0 at step 3 under
several guidance scales, from the kept halves), settling.png (how far x0 moved at each step) and
attention.png (the picture and its words' attention over all steps).
"""
from __future__ import annotations

import argparse
from pathlib import Path

from PIL import Image, ImageDraw

CELL = 128


def captioned(pictures: list[tuple[Image.Image, str]]) -> Image.Image:
    from studio.export import font

    sheet = Image.new("RGB", (len(pictures) * CELL, CELL + 18), "white")
    draw = ImageDraw.Draw(sheet)
    for i, (picture, text) in enumerate(pictures):
        sheet.paste(picture.convert("RGB").resize((CELL, CELL), Image.Resampling.NEAREST), (i * CELL, 0))
        draw.text((i * CELL + CELL // 2, CELL + 2), text, fill="black", font=font(11), anchor="ma")
    return sheet


def attention_row(manager, path: Path) -> None:
    from studio import attention
    from studio.requests import GenerationRequest

    run = manager.generate(GenerationRequest(prompt="a large red circle on a blue background", seed=5,
                                             num_inference_steps=20, record_attention=True))
    maps = attention.maps_at(run.trajectory, None)
    row = [(run.images[0], "the picture")]
    for word in ("large", "red", "circle", "blue", "background"):
        heat = attention.heat(maps, attention.find_word(run.trajectory, word), (CELL, CELL), stretch=True)
        row.append((attention.hot(heat), f'"{word}"'))
    captioned(row).save(path)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.pictures", description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent.parent / "docs")
    args = parser.parse_args(argv)
    from studio import branching, export, lens
    from studio.config import DEFAULT_MODEL, Settings
    from studio.manager import PipelineManager
    from studio.requests import GenerationRequest

    manager = PipelineManager(Settings(model=DEFAULT_MODEL))
    manager.load()
    args.out.mkdir(parents=True, exist_ok=True)
    x0s = lambda result: [manager.decode(s.x0[:1], "full")[0] for s in result.trajectory.steps]  # noqa: E731

    parent = manager.generate(GenerationRequest(prompt="a large red circle on a blue background", seed=5,
                                                num_inference_steps=12))
    branch = branching.branch(manager, parent, 3, prompt="a large yellow square on a blue background")
    export.branch_sheet([x0s(parent), x0s(branch)], 3, ("the run", "its branch"), cell=64).save(args.out / "branch.png")

    run = manager.generate(GenerationRequest(prompt="a large green triangle on a white background", seed=7,
                                             num_inference_steps=10))
    step = run.trajectory.steps[2]
    decode = lambda latents: manager.decode(latents[:1].float(), "full")[0]  # noqa: E731
    u, c = decode(step.x0_uncond), decode(step.x0_cond)
    row = [(u, "unconditional (0)"), (c, "conditional (1)")]
    row += [(decode(lens.remix(step, s, 7.5)), f"guidance {s:g}") for s in (3, 7.5, 12)]
    row += [(lens.difference_map(u, c), "where they differ")]
    captioned(row).save(args.out / "lens.png")

    settle = manager.generate(GenerationRequest(prompt="a small blue square at the top left on a yellow background",
                                                seed=2, num_inference_steps=20))
    moves = lens.changes(settle.trajectory)
    export.convergence_chart(moves, lens.SETTLED, lens.settled_at(moves)).save(args.out / "settling.png")
    print(lens.settled_sentence(settle.trajectory))
    attention_row(manager, args.out / "attention.png")
    print(f"wrote {', '.join(str(args.out / n) for n in ('branch.png', 'lens.png', 'settling.png', 'attention.png'))}")


if __name__ == "__main__":
    main()
