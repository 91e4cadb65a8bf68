"""Training curves from a run's TensorBoard events, as a PNG a person can look at."""

from pathlib import Path


def read_scalars(log_dir: str | Path) -> dict[str, list[tuple[int, float]]]:
    """All scalar series of a TensorBoard folder: tag -> [(step, value), ...]."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    log_dir = Path(log_dir)
    if not log_dir.is_dir():
        raise FileNotFoundError(f"{log_dir} is not a folder of TensorBoard events")
    events = EventAccumulator(str(log_dir), size_guidance={"scalars": 0})
    events.Reload()
    return {
        tag: [(e.step, e.value) for e in events.Scalars(tag)] for tag in events.Tags()["scalars"]
    }


PANELS = (
    ("loss", ("train/loss", "val/loss")),
    ("validation BLEU", ("val/bleu",)),
    ("learning rate", ("train/lr",)),
)


def plot_curves(log_dir: str | Path, path: str | Path, title: str = "") -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    series = read_scalars(log_dir)
    if not any(tag in series for _, tags in PANELS for tag in tags):
        raise ValueError(f"{log_dir} has no train/val curves (tags found: {sorted(series)})")
    fig, axes = plt.subplots(1, len(PANELS), figsize=(5 * len(PANELS), 3.6))
    for ax, (name, tags) in zip(axes, PANELS):
        for tag in tags:
            if tag in series:
                steps, values = zip(*series[tag])
                ax.plot(
                    steps,
                    values,
                    marker="o" if tag.startswith("val") else None,
                    markersize=3,
                    label=tag,
                )
        ax.set_title(name)
        ax.set_xlabel("step (optimizer updates)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, dpi=100)
    except OSError as err:
        reason = "a file is in the way" if isinstance(err, FileExistsError) else err.strerror
        raise OSError(f"cannot write the plot {path}: {reason or err}") from None
    finally:
        plt.close(fig)
    return path
