"""app: a page to draw on that asks a served model, with its answer as a bar chart.

Reads:  a running `mlflow models serve` of a packaged model (SERVER_URL).
Shows:  a canvas and an image upload; when a stroke ends or an image arrives, the page sends
        it to SERVER_URL/invocations as a base64 PNG (the request any client can send) and
        charts the class probabilities of the answer. A refusal shows the server's message.
Needs:  the `app` extra: pip install -e ".[app]" (Gradio); `make app` installs it.

    make serve                          # in one terminal: the registered model on :5000
    make app                            # in another: the page on http://127.0.0.1:7860
    python app.py --server-url http://127.0.0.1:5001 --port 7861
"""

import argparse
import os

from mlpipe_vision import drawing_page


def build_parser() -> argparse.ArgumentParser:
    """The command line; defaults from SERVER_URL and APP_PORT."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--server-url",
        default=os.environ.get("SERVER_URL", "http://127.0.0.1:5000"),
        help="the served model (default: SERVER_URL or http://127.0.0.1:5000)",
    )
    parser.add_argument(
        "--port",
        type=int,
        default=int(os.environ.get("APP_PORT", "7860")),
        help="the page's port (default: APP_PORT or 7860)",
    )
    parser.add_argument(
        "--host", default="127.0.0.1", help="address to listen on (default: this machine only)"
    )
    return parser


def main() -> None:
    """Start the page and serve it until interrupted."""
    args = build_parser().parse_args()
    print(f"asking the model at {args.server_url}; open http://{args.host}:{args.port}")
    drawing_page.serve(args.server_url, args.host, args.port)


if __name__ == "__main__":
    main()
