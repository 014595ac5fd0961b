"""Gradio app: upload a dermoscopic image, get calibrated class probabilities, a CAM and TTA agreement.

    python app.py                                  # the shipped model in weights/
    python app.py --model runs/x/model --model owner/repo@v1.0 --examples ~/derm_examples

Layout, event wiring and flags only: what the callbacks do lives in `skinlesion.app`.
API (gradio_client): `/predict` (image only is enough) and `/compare` (several models' CAMs).
"""

from __future__ import annotations

import argparse
import functools
import logging
import os
import sys
from pathlib import Path

# A Hugging Face Space installs requirements.txt but never this repository (`pip install -e .`), and
# `python app.py` puts only the repo root on sys.path: the package is then importable from src/ alone.
# An installed skinlesion (pip install -e . / the README's dev install) is used as it is.
try:
    import skinlesion  # noqa: F401
except ImportError:
    sys.path.insert(0, str(Path(__file__).resolve().parent / "src"))

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # before gradio is imported

import gradio as gr  # noqa: E402

from skinlesion import app as logic  # noqa: E402
from skinlesion.inference.variants import AUTO, VARIANTS  # noqa: E402

SHIPPED_WEIGHTS = Path(__file__).resolve().parent / "weights"
# Clickable examples shown by default (train-split images + one non-lesion; see examples/README.md).
SHIPPED_EXAMPLES = Path(__file__).resolve().parent / "examples"
MAX_UPLOAD = "50mb"
CSS = """
.disclaimer {border-left: 4px solid #d97706; padding-left: 0.8em;}
#model-input img {width: 100%; height: 100%; object-fit: contain; image-rendering: pixelated;}
#warnings h3 {background: #fee2e2; color: #991b1b; border-left: 6px solid #b91c1c; padding: 0.6em 0.8em;}
#ood-status, #cases-status {font-size: 0.92em;}
"""  # the model input is small (64-384 px): show it enlarged with its pixels visible


def build_demo(registry: logic.ModelRegistry, examples_dir: str | Path | None = None, *,
               concurrency_limit: int = 2, max_queue: int = 64,
               case_images: logic.CaseImages | None = None) -> gr.Blocks:
    """The whole page over `registry`; the queue allows `concurrency_limit` requests to run at once.

    `case_images`: pictures of the similar cases (else the cases are listed in a table only)."""
    examples = logic.example_images(examples_dir)
    available = registry.available_names
    default = registry.default_name
    view = logic.model_changed(registry, default) if default else logic.ModelView(logic.target_choices([]), "")

    with gr.Blocks(title="Skin lesion classifier (research demo)", analytics_enabled=False) as demo:
        gr.Markdown("# Dermoscopic skin-lesion classifier\nCalibrated probabilities over the HAM10000 "
                    "diagnoses, a class activation map of where the model looked, and how test-time "
                    "augmentation views agreed.")
        gr.Markdown(logic.DISCLAIMER, elem_classes="disclaimer")
        # The title names the model answering and where it came from (Hub id@revision or the shipped
        # weights/); the panel opens by itself when a requested model failed, saying why.
        with gr.Accordion(registry.serving_summary(),
                          open=not available or any(registry.error(n) for n in registry.names)):
            gr.Markdown(registry.status_markdown(), elem_id="model-status")

        with gr.Row():
            with gr.Column(scale=2, min_width=300):
                image = gr.Image(label="Dermoscopic image", sources=["upload", "clipboard", "webcam"],
                                 type="filepath", height=320, elem_id="input-image")
                # Without any model the dropdown still has a value, so /predict keeps its image-only signature
                # and answers with "No model is available" instead of a missing-argument error.
                model = gr.Dropdown(choices=available or [("no model available", "")], value=default or "",
                                    label="Model", elem_id="model")
                method = gr.Dropdown(choices=logic.cam_method_choices(), value="gradcam", label="CAM method")
                target = gr.Dropdown(choices=view.target_choices, value=logic.PREDICTED, label="Class to explain",
                                     allow_custom_value=True, elem_id="target")
                tta = gr.Radio(choices=logic.tta_choices(), value=logic.MODEL_DEFAULT_TTA,
                               label="Test-time augmentation")
                alpha = gr.Slider(0.0, 1.0, value=0.5, step=0.05, label="Overlay opacity")
                run = gr.Button("Analyze", variant="primary", elem_id="analyze")
                example_panel = None
                if examples:
                    # No caching: a result depends on the model and controls too, and eager caching would
                    # run every example at start-up. A click loads the image, then runs the analysis below.
                    example_panel = gr.Examples(examples=[[str(p)] for p in examples], inputs=[image],
                                                label="Examples (click one; the caption is the true diagnosis)",
                                                example_labels=logic.example_labels(examples),
                                                cache_examples=False, elem_id="examples")

            with gr.Column(scale=3):
                with gr.Tabs():
                    with gr.Tab("Result"):
                        ood_intro, cases_intro = logic.extras_intro(registry, default, case_images)
                        warnings = gr.Markdown(label="Warnings", elem_id="warnings")
                        ood_status = gr.Markdown(ood_intro, elem_id="ood-status")
                        # A non-dermoscopic image gets the refusal in `warnings` and this collapsed behind
                        # "show anyway" (logic.extras_view): it is not presented as a result.
                        with gr.Accordion("Model output", open=True, elem_id="result-details") as result_details:
                            with gr.Row(equal_height=True):
                                model_input = gr.Image(label="What the model sees", format="png", height=224,
                                                       interactive=False, elem_id="model-input")
                                label = gr.Label(num_top_classes=logic.TOP_K, label="Top classes (calibrated)",
                                                 elem_id="label")
                            summary = gr.Markdown(label="Summary", elem_id="summary")
                            with gr.Row(equal_height=True):
                                heatmap = gr.Image(label="CAM heatmap", format="jpeg", height=300,
                                                   interactive=False)
                                overlay = gr.Image(label="Overlay on the original", format="jpeg", height=300,
                                                   interactive=False, elem_id="overlay")
                            agreement = gr.Markdown(label="TTA agreement", elem_id="agreement")
                        with gr.Accordion("Similar confirmed cases", open=True, elem_id="cases-panel") as cases_panel:
                            cases_status = gr.Markdown(cases_intro, elem_id="cases-status")
                            cases_gallery = gr.Gallery(label="Nearest confirmed training lesions (click one)",
                                                       columns=5, height=220, allow_preview=False, format="jpeg",
                                                       visible=False, elem_id="cases-gallery")
                            with gr.Row(equal_height=True):
                                case_query = gr.Image(label="Your image", height=300, interactive=False,
                                                      visible=False, elem_id="case-query")
                                case_selected = gr.Image(label="Selected case", height=300, interactive=False,
                                                         visible=False, elem_id="case-selected")
                            case_caption = gr.Markdown(elem_id="case-caption")
                            cases_table = gr.Markdown(elem_id="cases-table")
                        with gr.Accordion("Raw output (JSON)", open=False):
                            details = gr.JSON(label="Prediction")
                    with gr.Tab("Compare models"):
                        models = gr.CheckboxGroup(choices=available, value=available[:logic.MAX_COMPARE_MODELS],
                                                  label=f"Models (at most {logic.MAX_COMPARE_MODELS})")
                        compare_button = gr.Button("Compare CAMs", elem_id="compare")
                        gallery = gr.Gallery(label="Same image, each model's map", columns=3, format="jpeg",
                                             height="auto", elem_id="gallery")
                        comparison = gr.Markdown(label="Comparison table")
                class_notes = gr.Markdown(view.class_notes)

        def predict(image, model_name, method, target, tta, alpha):
            a = logic.analyze(registry, image, model_name, method, target, tta, alpha)
            return a.label, a.overlay, a.heatmap, a.model_input, a.summary, a.warnings, a.agreement, a.details

        def show_extras(details, image):
            v = logic.extras_view(details, logic.pictures_for(registry, details, case_images))
            pictures = bool(v.gallery)
            return (v.ood_status, gr.Accordion(label=v.result_label, open=not v.flagged),
                    gr.Accordion(label=v.cases_label, open=not v.flagged), v.cases_status,
                    gr.Gallery(value=v.gallery, visible=pictures), v.table,
                    gr.Image(value=image if pictures else None, visible=pictures),
                    gr.Image(value=None, visible=pictures), "")

        def select_case(details, evt: gr.SelectData):
            return logic.selected_case(details, evt.index, logic.pictures_for(registry, details, case_images))

        def compare(image, model_names, method, target, tta, alpha):
            return logic.compare(registry, image, model_names, method, target, tta, alpha)

        def model_change(model_name):
            v = logic.model_changed(registry, model_name)
            return gr.Dropdown(choices=v.target_choices, value=logic.PREDICTED), v.class_notes

        controls = [method, target, tta, alpha]
        # preprocess=False: the upload reaches skinlesion.app undecoded, so a broken file gets our message
        # (gr.Image's own decoder would fail first with a generic one).
        outputs = [label, overlay, heatmap, model_input, summary, warnings, agreement, details]
        extras_outputs = [ood_status, result_details, cases_panel, cases_status, cases_gallery, cases_table,
                          case_query, case_selected, case_caption]
        run.click(predict, [image, model, *controls], outputs, api_name="predict", preprocess=False
                  ).success(show_extras, [details, image], extras_outputs, api_visibility="private")
        if example_panel is not None:  # clicking an example analyses it, exactly as the button does
            example_panel.load_input_event.then(
                predict, [image, model, *controls], outputs, preprocess=False, api_visibility="private"
            ).success(show_extras, [details, image], extras_outputs, api_visibility="private")
        cases_gallery.select(select_case, [details], [case_selected, case_caption], api_visibility="private")
        compare_button.click(compare, [image, models, *controls], [gallery, comparison],
                             api_name="compare", preprocess=False)
        model.change(model_change, [model], [target, class_notes], api_visibility="private")

    demo.queue(default_concurrency_limit=concurrency_limit, max_size=max_queue)
    return demo


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    models = parser.add_argument_group("models")
    models.add_argument("--model", action="append", default=[], metavar="PATH_OR_ID",
                        help="model folder or Hub id (OWNER/NAME@REVISION pins a revision); repeatable. "
                             f"Also read from ${logic.MODEL_ID_ENV} (comma-separated)")
    models.add_argument("--default-model", action=argparse.BooleanOptionalAction, default=True,
                        help=f"also serve the shipped model in {SHIPPED_WEIGHTS.name}/ when it holds one")
    models.add_argument("--examples", type=Path, default=None, metavar="DIR",
                        help=f"folder of example images (else ${logic.EXAMPLES_DATASET_ENV}, a Hub dataset id; "
                             f"else the shipped {SHIPPED_EXAMPLES.name}/ folder)")
    cases = parser.add_argument_group("similar cases")
    cases.add_argument("--cases-images", type=Path, default=None, metavar="DIR",
                       help="folder holding the images of the model's case index (e.g. HAM10000), found by image "
                            f"id; else ${logic.CASES_DATASET_ENV}, a Hub dataset id; without either: a table only")
    server = parser.add_argument_group("server")
    server.add_argument("--host", default=None, help="default: $GRADIO_SERVER_NAME or 127.0.0.1")
    server.add_argument("--port", type=int, default=None, help="default: $GRADIO_SERVER_PORT or 7860")
    server.add_argument("--share", action=argparse.BooleanOptionalAction, default=False,
                        help="public gradio.live link")
    server.add_argument("--concurrency", type=int, default=2, help="requests processed at once (CPU: 1-2)")
    server.add_argument("--max-queue", type=int, default=64, help="requests waiting before new ones are refused")
    server.add_argument("--inference", choices=[AUTO, *VARIANTS], default=AUTO,
                        help="which forward serves the models: auto = onnxruntime when the folder's model.onnx "
                             "matches it, else PyTorch channels_last; eager = the reference (benchmarks)")
    return parser


def main(argv: list[str] | None = None) -> None:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.examples is not None and not args.examples.is_dir():
        parser.error(f"--examples {args.examples}: no such folder")
    if args.cases_images is not None and not args.cases_images.is_dir():
        parser.error(f"--cases-images {args.cases_images}: no such folder")
    sources = logic.model_sources(args.model, os.environ.get(logic.MODEL_ID_ENV),
                                  SHIPPED_WEIGHTS if args.default_model else None)
    registry = logic.ModelRegistry(sources.specs, notes=sources.notes,
                                   loader=functools.partial(logic.load_predictor, variant=args.inference))
    registry.load_all()
    examples_dir = args.examples
    dataset = os.environ.get(logic.EXAMPLES_DATASET_ENV)
    if examples_dir is None and not dataset and SHIPPED_EXAMPLES.is_dir():
        examples_dir = SHIPPED_EXAMPLES  # the flag and the Hub dataset override the shipped examples
    if examples_dir is None and dataset:
        try:
            examples_dir = logic.examples_from_hub(dataset)
        except Exception as err:  # noqa: BLE001 - the app starts without examples and says why on the page
            logging.getLogger(__name__).exception("examples dataset %s unavailable", dataset)
            registry.notes.append(f"Examples dataset `{dataset}` unavailable: {err}")
    case_images = logic.case_images_from(args.cases_images, os.environ.get(logic.CASES_DATASET_ENV))
    demo = build_demo(registry, examples_dir, concurrency_limit=args.concurrency, max_queue=args.max_queue,
                      case_images=case_images)
    launch(demo, host=args.host, port=args.port, share=args.share)


def launch(demo: gr.Blocks, *, host: str | None = None, port: int | None = None, share: bool = False,
           block: bool = True) -> str:
    """Serve `demo` as production does (tests pass block=False to get the URL back and keep going)."""
    _, local_url, _ = demo.launch(server_name=host, server_port=port, share=share, max_file_size=MAX_UPLOAD,
                                  theme=gr.themes.Soft(), css=CSS, prevent_thread_lock=not block, quiet=not block)
    return local_url


if __name__ == "__main__":
    main()
