"""The main job: run a notebook headless (nbclient) against the sandbox.

    python -m pimagic.demo [notebooks/quickstart.ipynb] [--output PATH] [--scripted]

When no model provider is configured for the notebook's folder, the shipped
scripted model stands in and the run says so loudly: it is not an LLM."""

from __future__ import annotations

import argparse
import os
import stat
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .config import PimagicSettings, load_settings
from .errors import PimagicError
from .scripted_model import SCRIPTED_PROVIDER, Turn, tool

PROVIDER_KEYS = (
    "ANTHROPIC_API_KEY", "OPENAI_API_KEY", "GEMINI_API_KEY", "OPENROUTER_API_KEY", "GROQ_API_KEY",
    "MISTRAL_API_KEY", "XAI_API_KEY", "DEEPSEEK_API_KEY",
)

SNAKE = '''"""Snake: the game logic, playable in a terminal with `python snake.py`."""
import random


class Game:
    def __init__(self, width=20, height=10, seed=0):
        self.width, self.height = width, height
        self.snake = [(width // 2, height // 2)]
        self.direction = (1, 0)
        self.rng = random.Random(seed)
        self.food = self._place_food()
        self.score = 0
        self.over = False

    def _place_food(self):
        free = [(x, y) for x in range(self.width) for y in range(self.height) if (x, y) not in self.snake]
        return self.rng.choice(free)

    def turn(self, dx, dy):
        if (dx, dy) != (-self.direction[0], -self.direction[1]):
            self.direction = (dx, dy)

    def step(self):
        if self.over:
            return
        x, y = self.snake[0]
        head = (x + self.direction[0], y + self.direction[1])
        if not (0 <= head[0] < self.width and 0 <= head[1] < self.height) or head in self.snake:
            self.over = True
            return
        self.snake.insert(0, head)
        if head == self.food:
            self.score += 1
            self.food = self._place_food()
        else:
            self.snake.pop()


def main():
    import curses

    def loop(screen):
        curses.curs_set(0)
        screen.timeout(120)
        game = Game(curses.COLS // 2 - 1, curses.LINES - 2)
        keys = {curses.KEY_UP: (0, -1), curses.KEY_DOWN: (0, 1), curses.KEY_LEFT: (-1, 0), curses.KEY_RIGHT: (1, 0)}
        while not game.over:
            key = screen.getch()
            if key == ord("q"):
                break
            if key in keys:
                game.turn(*keys[key])
            game.step()
            screen.erase()
            screen.addstr(0, 0, f"score {game.score}  (arrows to move, q to quit)")
            fx, fy = game.food
            screen.addstr(fy + 1, fx * 2, "()")
            for sx, sy in game.snake:
                screen.addstr(sy + 1, sx * 2, "[]")
        return game.score

    print("score:", curses.wrapper(loop))


if __name__ == "__main__":
    main()
'''

ANALYSIS = '''"""Summarise sales.csv: revenue per region, written to summary.csv."""
import csv
from collections import defaultdict

totals = defaultdict(float)
with open("sales.csv", newline="") as f:
    for row in csv.DictReader(f):
        totals[row["region"]] += float(row["units"]) * float(row["price"])

with open("summary.csv", "w", newline="") as f:
    writer = csv.writer(f)
    writer.writerow(["region", "revenue"])
    for region, revenue in sorted(totals.items()):
        writer.writerow([region, f"{revenue:.2f}"])
print("wrote summary.csv for", len(totals), "regions")
'''


def _last_user_text(request: dict[str, Any]) -> str:
    for message in reversed(request.get("messages") or []):
        if message.get("role") == "user":
            content = message.get("content")
            if isinstance(content, list):
                return " ".join(p.get("text", "") for p in content if isinstance(p, dict))
            return str(content or "")
    return ""


def demo_script(request: dict[str, Any]) -> Turn:
    """The scripted model's answers for the example notebooks: act on the last user prompt,
    then, once a tool result came back, say what was done."""
    messages = request.get("messages") or []
    if messages and messages[-1].get("role") == "tool":
        done = {
            "snake.py": "I wrote **snake.py**: a `Game` class with the rules and a curses front end "
                        "(`python snake.py`). *(scripted model: not a real LLM)*",
            "analysis.py": "I wrote **analysis.py**; it writes `summary.csv` with revenue per region. "
                           "*(scripted model)*",
        }
        text = str(messages[-1].get("content"))
        for name, answer in done.items():
            if name in text:
                return Turn(text=answer)
        return Turn(text=f"Done. The tool said: {text[:200]} *(scripted model)*")
    prompt = _last_user_text(request).lower()
    if "snake" in prompt:
        return Turn(tool_calls=[tool("write", path="snake.py", content=SNAKE)])
    if "csv" in prompt or "analysis" in prompt:
        return Turn(tool_calls=[tool("write", path="analysis.py", content=ANALYSIS)])
    if "gh " in prompt or "github" in prompt:
        command = prompt.split("run:", 1)[1].strip() if "run:" in prompt else "gh --version"
        return Turn(tool_calls=[tool("bash", command=command + " 2>&1; echo exit=$?")])
    return Turn(text="Hello from the **scripted model** (a stand-in for an LLM: no provider is configured).")


def provider_configured(settings: PimagicSettings) -> bool:
    """True when pi has something real to talk to: a chosen non-scripted model, a login, or a key."""
    if settings.model and not settings.model.startswith(SCRIPTED_PROVIDER + "/"):
        return True
    # auth.json is pi's (the agent's dir): an lstat only, to choose the demo's model, never opened.
    try:
        auth = os.stat(settings.pi_data_path / "auth.json", follow_symlinks=False)
        if stat.S_ISREG(auth.st_mode) and auth.st_size > 2:
            return True
    except OSError:
        pass
    return any(os.environ.get(k) for k in PROVIDER_KEYS)


def run_notebook(notebook: Path, output: Path, *, scripted: bool | None = None, timeout: int = 900) -> Path:
    import nbformat
    from nbclient import NotebookClient

    from .offline import start_scripted_model, use_scripted_model
    from .sandbox import docker_client

    workspace = notebook.parent.resolve()
    settings = load_settings(workspace)
    server = None
    env = dict(os.environ)
    if scripted or (scripted is None and not provider_configured(settings)):
        print("pimagic demo: no model provider configured -> using the SCRIPTED model "
              "(pimagic's offline stand-in, not a real LLM)", flush=True)
        server = start_scripted_model(docker_client(), demo_script)
        env["PIMAGIC_MODEL"] = use_scripted_model(settings, server)
    nb = nbformat.read(notebook, as_version=4)
    client = NotebookClient(
        nb, timeout=timeout, kernel_name="python3", resources={"metadata": {"path": str(workspace)}}
    )
    old_env = dict(os.environ)
    os.environ.update(env)  # the kernel inherits it
    try:
        client.execute()
    finally:
        os.environ.clear()
        os.environ.update(old_env)
        if server is not None:
            server.stop()
        output.parent.mkdir(parents=True, exist_ok=True)
        nbformat.write(nb, output)
    return output


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m pimagic.demo", description=__doc__.splitlines()[0])
    p.add_argument("notebook", nargs="?", default="notebooks/quickstart.ipynb")
    p.add_argument("--output", help="where the executed notebook goes (default: NAME.out.ipynb beside it)")
    p.add_argument("--scripted", action="store_true", default=None,
                   help="use the scripted model even if a provider is configured")
    args = p.parse_args(argv)
    notebook = Path(args.notebook)
    if not notebook.is_file():
        print(f"pimagic demo: no notebook at {notebook}", file=sys.stderr)
        return 2
    output = Path(args.output) if args.output else notebook.with_suffix(".out.ipynb")
    try:
        path = run_notebook(notebook, output, scripted=args.scripted)
    except PimagicError as e:
        print(f"pimagic demo: error: {e}", file=sys.stderr)
        return 1
    except Exception as e:  # nbclient's CellExecutionError carries the failing cell
        print(f"pimagic demo: the notebook failed: {e}", file=sys.stderr)
        print(f"pimagic demo: partial result in {output.resolve()}", file=sys.stderr)
        return 1
    _print_agent_cells(path)
    print(f"pimagic demo: done -> {path.resolve()}")
    print(f"pimagic demo: the folder's sandbox keeps running; `pimagic clean -w {path.parent}` removes it")
    return 0


def _print_agent_cells(path: Path) -> None:
    """Echo what the agent did (each %%pi cell's plain-text output) for a headless run."""
    import nbformat

    for cell in nbformat.read(path, as_version=4).cells:
        if cell.cell_type != "code" or not cell.source.startswith("%%pi"):
            continue
        print(f"\n>>> {cell.source.splitlines()[1] if len(cell.source.splitlines()) > 1 else cell.source}")
        for output in cell.get("outputs", []):
            text = output.get("data", {}).get("text/plain") or output.get("text") or ""
            if text.strip():
                print(text.rstrip())


if __name__ == "__main__":
    raise SystemExit(main())
