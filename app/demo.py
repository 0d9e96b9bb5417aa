"""The Gradio page: layout, event wiring, error display and launch settings.

The work happens in :mod:`app.handlers`; this module only turns their results into component
values and their :class:`~clipsep.errors.ClipsepError` messages into ``gr.Error`` (a readable
message in the page, never a stack trace). Unexpected exceptions are logged here, server-side,
and the visitor gets a short apology.
"""

from __future__ import annotations

import logging
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import gradio as gr
from gradio.utils import get_upload_folder

from app import handlers
from clipsep.config import Params, ServeConfig
from clipsep.errors import ClipsepError

log = logging.getLogger(__name__)

TITLE = "CLIPSep: text-queried sound separation"
INTRO = (
    "Upload a recording (or a video, or use the microphone), say which sound you want, "
    "and get it back on its own together with everything else. Queries are text "
    '("violin") or a picture; for a video its middle frame is offered as picture query.'
)
NO_EXAMPLES = (
    "No ready-made examples: the embedded world is not rendered here. Run "
    "`clipsep world` (or `dvc repro world`) in the project folder and restart the app "
    "to get some."
)
UNEXPECTED = "Something went wrong on the server while separating (it is logged). Try another file."


@dataclass
class Served:
    """What one page serves: the loaded separator, its card and the examples."""

    separator: object  # clipsep.inference.Separator
    card: handlers.ModelCard
    examples: list[handlers.Example] = field(default_factory=list)
    examples_dir: Path | None = None


def allowed_roots(served: Served) -> list[Path]:
    """Folders a handler may open: Gradio's upload area and the examples cache."""
    roots = [Path(get_upload_folder())]
    return roots + [served.examples_dir] if served.examples_dir else roots


def separate_event(
    served: Served, cfg: ServeConfig, audio_path, video_path, text, image, progress: gr.Progress
):
    """The Separate button and the ``/separate`` API: (target, residual, spectrograms, summary,
    *more stems) or a gr.Error. Every audio value is the path of a 16-bit wav named after its
    query (:func:`app.handlers.write_players`), which a visitor or client downloads under that
    name; a stem player without a stem gets None (its visibility and label are set by
    :func:`stem_players`, outside the API)."""
    path = audio_path or video_path
    try:
        accepted = handlers.check_upload(path, cfg, allowed_roots(served))
        result = handlers.separate_upload(
            served.separator,
            accepted,
            text,
            image,
            cfg,
            progress=lambda share, what: progress(share, desc=what),
        )
        *stems, residual = handlers.write_players(result, stem_folder())
    except ClipsepError as err:
        raise gr.Error(str(err), print_exception=False) from err
    except Exception as err:  # noqa: BLE001 - a visitor gets a sentence, the log the traceback
        log.exception("separation failed for %s", path)
        raise gr.Error(UNEXPECTED, print_exception=False) from err
    extra = stems[1:] + [None] * (handlers.MAX_STEMS - len(stems))
    return stems[0], residual, result.picture, result.summary, *extra


def stem_folder() -> Path:
    """A new folder for one separation's stem files in Gradio's upload folder, where gradio keeps
    the files it serves (it serves these in place, without a copy)."""
    root = Path(get_upload_folder())
    root.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix="stems-", dir=root))


def stem_players(text):
    """Label the players a query text fills with their queries, the first one too when there
    are several (:func:`app.handlers.stem_label`, as on the spectrogram); hide the extra players
    it does not fill (after a successful separation, in the page only)."""
    names = handlers.split_queries(text)
    first = gr.update(label=handlers.stem_label(names[0] if names else "", len(names)))
    return [first] + [
        gr.update(label=handlers.stem_label(names[k + 1], len(names)), visible=True)
        if k + 1 < len(names)
        else gr.update(value=None, label=f"Stem {k + 2}", visible=False)
        for k in range(handlers.MAX_STEMS - 1)
    ]


def video_changed(served: Served, cfg: ServeConfig, video_path):
    """A new video: clear the audio input and offer the video's middle frame as image query."""
    if not video_path:
        return gr.update(), gr.update()
    try:
        accepted = handlers.check_upload(video_path, cfg, allowed_roots(served))
        return None, handlers.offered_image(accepted)
    except ClipsepError as err:
        raise gr.Error(str(err), print_exception=False) from err


def build_demo(params: Params, served: Served) -> gr.Blocks:
    """The page: inputs (audio/video, text query with chips, image query), outputs, examples."""
    cfg = params.serve
    with gr.Blocks(title="CLIPSep demo") as demo:
        gr.Markdown(f"# {TITLE}\n{INTRO}")
        gr.Markdown(served.card.markdown(), elem_id="model-card")
        with gr.Row(equal_height=False):
            with gr.Column():
                audio_in, video_in, query, image = _input_column(params)
                button = gr.Button("Separate", variant="primary")
            with gr.Column():
                target = gr.Audio(
                    label=handlers.TARGET_LABEL,
                    type="numpy",
                    interactive=False,
                    buttons=["download"],
                    elem_id="target-audio",
                )
                more = [
                    gr.Audio(
                        label=f"Stem {k + 2}",
                        type="numpy",
                        interactive=False,
                        buttons=["download"],
                        visible=False,
                        elem_id=f"stem-{k + 2}-audio",
                    )
                    for k in range(handlers.MAX_STEMS - 1)
                ]
                residual = gr.Audio(  # below the stems: what none of the queries took
                    label=handlers.RESIDUAL_LABEL,
                    type="numpy",
                    interactive=False,
                    buttons=["download"],
                    elem_id="residual-audio",
                )
                summary = gr.Textbox(label="Info", interactive=False, lines=2, elem_id="info")
        spectrograms = gr.Image(
            label="Spectrograms: mixture, target, residual",
            type="pil",
            format="png",
            interactive=False,
            elem_id="spectrograms",
            show_label=False,
        )  # the picture titles its own panels
        outputs = [target, residual, spectrograms, summary, *more]

        # every input optional for API clients (a None default is what gradio takes as such):
        # an audio or a video file; a video without a query is queried by its middle frame
        def separate(
            audio_path=None, video_path=None, text=None, picture=None, progress=gr.Progress()
        ):
            return separate_event(served, cfg, audio_path, video_path, text, picture, progress)

        button.click(
            separate,
            inputs=[audio_in, video_in, query, image],
            outputs=outputs,
            api_name="separate",
        ).success(stem_players, inputs=query, outputs=[target, *more], api_visibility="private")
        video_in.upload(
            lambda v: video_changed(served, cfg, v),
            inputs=video_in,
            outputs=[audio_in, image],
            api_name=False,
        )

        def separate_example(audio_path, text, progress=gr.Progress()):  # one query each
            values = separate_event(served, cfg, audio_path, None, text, None, progress)
            first, *more_players = stem_players(text)
            return {**first, "value": values[0]}, *values[1:4], *more_players

        _examples_section(served, [audio_in, query], outputs, separate_example)
    return demo


def _input_column(params: Params):
    """Audio/video tabs, the text query with one-click suggestions, the optional image query."""
    with gr.Tabs():
        with gr.Tab("Audio"):
            audio_in = gr.Audio(
                label="Mixture (upload or record)",
                type="filepath",
                sources=["upload", "microphone"],
            )
        with gr.Tab("Video"):
            video_in = gr.Video(label="Mixture (video: its sound is separated)", sources=["upload"])
    query = gr.Textbox(
        label="Text query (several: comma-separated)",
        placeholder="what to extract, e.g. violin, or: violin, cello",
    )
    gr.Examples(
        examples=[[name] for name in params.world.classes],
        inputs=[query],
        label="Query suggestions (click to fill)",
        examples_per_page=len(params.world.classes),
    )
    image = gr.Image(
        label="Image query (optional; used when the text query is empty)",
        type="pil",
        sources=["upload"],
    )
    return audio_in, video_in, query, image


def _examples_section(served: Served, inputs, outputs, run) -> None:
    if not served.examples:
        gr.Markdown(NO_EXAMPLES)
        return
    gr.Examples(
        examples=[[str(e.audio_path), e.query] for e in served.examples],
        inputs=inputs,
        outputs=outputs,
        fn=run,
        run_on_click=True,
        cache_examples=False,
        example_labels=[f"{e.title} -> {e.query}" for e in served.examples],
        label="Examples from the embedded world (click one)",
    )


def launch(demo: gr.Blocks, cfg: ServeConfig, served: Served, **extra) -> gr.Blocks:
    """Queue (serve.concurrency at once, serve.queue_size waiting) and serve on serve.host."""
    demo.queue(default_concurrency_limit=cfg.concurrency, max_size=cfg.queue_size)
    demo.launch(
        server_name=cfg.host,
        server_port=cfg.port,
        max_file_size=f"{cfg.max_file_mb}mb",
        show_error=True,
        share=False,
        allowed_paths=[str(served.examples_dir)] if served.examples_dir else None,
        **extra,
    )
    return demo
