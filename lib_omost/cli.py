"""`python -m lib_omost`: the canvas core from the command line, no WebUI needed.

Every command prints its result on stdout and warnings on stderr. Any failure is one line on stderr and a
non-zero exit code, never a traceback. Heavy modules are imported inside the commands that need them.
"""

import argparse
import json
import signal
import sys


def _read(path: str) -> str:
    if path == '-':
        return sys.stdin.read()
    with open(path, 'r', encoding='utf-8', errors='replace') as f:
        return f.read()


def _load(path: str):
    from lib_omost.canvas import load_canvas
    result = load_canvas(_read(path))
    for w in result.warnings:
        print(f'warning: {w}', file=sys.stderr)
    return result.canvas


def cmd_parse(args) -> int:
    print(json.dumps(_load(args.file).to_json(), indent=2, ensure_ascii=False))
    return 0


def cmd_sketch(args) -> int:
    from lib_omost import sketch
    canvas = _load(args.file)
    if args.overlay:
        image = sketch.overlay_preview(canvas, args.width, args.height)
    else:
        image = sketch.sketch_image(canvas, args.width, args.height, blur=args.blur)
    import io
    from lib_omost.atomic import write_atomic
    png = io.BytesIO()
    image.save(png, format='PNG')
    write_atomic(args.output, png.getvalue())
    print(args.output)
    return 0


def cmd_bags(args) -> int:
    from lib_omost.prompts import cli_bags
    return cli_bags(args, _load(args.file))


def cmd_chat(args) -> int:
    from lib_omost.llm.cli import cli_chat
    return cli_chat(args)


def cmd_bench(args) -> int:
    import importlib
    return importlib.import_module(f'lib_omost.bench.{args.what}').main(args)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog='python -m lib_omost', description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest='command', required=True)

    p = sub.add_parser('parse', help='print the canvas JSON of Canvas code, an LLM reply or canvas JSON')
    p.add_argument('file', help='a file, or - for standard input')
    p.set_defaults(func=cmd_parse)

    p = sub.add_parser('sketch', help='write the colour sketch (or the region overlay) as a PNG')
    p.add_argument('file', help='a file, or - for standard input')
    p.add_argument('-o', '--output', required=True, help='PNG to write')
    p.add_argument('--width', type=int, default=1024)
    p.add_argument('--height', type=int, default=1024)
    p.add_argument('--blur', type=int, default=0, help='box-blur radius on the 90 grid (Omost uses 40)')
    p.add_argument('--overlay', action='store_true', help='draw region boxes, labels and depth order')
    p.set_defaults(func=cmd_sketch)

    p = sub.add_parser('bags', help='print the sub-prompt bags, the host prompt and the token->region map')
    p.add_argument('file', help='a file, or - for standard input')
    p.add_argument('--preset', default='none', help='tag preset: none, anime, pony, illustrious or your own')
    p.add_argument('--prompt', default='', help="the WebUI prompt box's text (quality words, <lora:...> tags)")
    p.add_argument('--prompt-target', choices=['every', 'global'], default='every',
                   help='add the prompt box text to every bag or to the global region only')
    p.add_argument('--presets', default=None, metavar='JSON', help='your own tag presets file (adds to the shipped ones)')
    p.set_defaults(func=cmd_bags)

    p = sub.add_parser('chat', help='ask an Omost LLM for a canvas; streams the reply to stdout')
    p.add_argument('prompt')
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument('--base-url', help='OpenAI-compatible server, e.g. http://127.0.0.1:8080/v1')
    src.add_argument('--local', metavar='PATH', help='a local transformers model folder')
    src.add_argument('--gguf', metavar='FILE', help='a GGUF file, or a known GGUF name, run in process by '
                                                    'llama-cpp-python')
    p.add_argument('--model', help='model name on the server')
    p.add_argument('--api-key', default=None)
    p.add_argument('--timeout', type=float, default=120.0,
                   help='seconds to wait for the server: to connect, for the first reply text and between pieces of '
                        'text (keep-alives do not count)')
    p.add_argument('--seed', type=int, default=12345)
    p.add_argument('--temperature', type=float, default=0.6, help='0 = greedy')
    p.add_argument('--top-p', type=float, default=0.9)
    p.add_argument('--max-new-tokens', type=int, default=4096)
    p.add_argument('--no-cache', action='store_true', help='do not read or write the response cache')
    p.add_argument('--cache-dir', default=None, help='response cache folder')
    p.add_argument('--models-dir', default='models/omost',
                   help='where --local Omost model names and --gguf known names are downloaded')
    p.add_argument('--n-gpu-layers', type=int, default=None,
                   help='--gguf: layers on the GPU (default: all with a GPU build of llama-cpp-python, else 0)')
    p.add_argument('--threads', type=int, default=None, help="--gguf: CPU threads (default: llama.cpp's choice)")
    p.add_argument('-o', '--output', help='write the canvas code of the reply here')
    p.set_defaults(func=cmd_chat)

    from lib_omost.guidance_cli import add_parser as add_guide_parser
    add_guide_parser(sub)

    p = sub.add_parser('bench', help='benchmarks that print ratios side by side')
    p.add_argument('what', choices=['canvas', 'attention', 'llm', 'host', 'live'])
    p.add_argument('--quick', action='store_true', help='fewer shapes and repeats')
    p.add_argument('--url', help='host: the running WebUI, e.g. http://127.0.0.1:7860')
    p.add_argument('--pid', type=int, help='host: the WebUI process (CPU time and peak memory)')
    p.add_argument('--pid-file', help='host: a file holding that pid')
    p.add_argument('--jobs', help='host: CHECKPOINT:SIZE:STEPS,... (default random-sd15:512:20,random-sdxl:1024:4)')
    p.add_argument('--repeats', type=int, help='host: timed runs of each kind (default 3)')
    p.add_argument('--canvas', help='host: the canvas file (default: the dragon battle transcript)')
    p.add_argument('--json', help='host: also write the figures here')
    p.add_argument('--rate', type=float, help='live: tokens per second the loopback server streams (default 50)')
    p.add_argument('--turns', action='store_true', help="llm: Omost's two-turn chat with and without the "
                                                        'conversation cache and prompt-lookup drafting')
    p.add_argument('--backend', choices=['gguf', 'local', 'both'], default='gguf',
                   help='llm --turns: the in-process backend(s) to measure (default gguf, the one the goals are '
                        'set for; local = transformers)')
    p.add_argument('--threads', type=int, help='llm --turns: CPU threads (default: all cores)')
    p.set_defaults(func=cmd_bench)
    return parser


def take_ctrl_c():
    """Ctrl-C (SIGINT) stops a command, as the commands promise ("error: interrupted", exit 130), even when the
    program was started with SIGINT ignored: a non-interactive shell starts every `cmd &` so, Python then keeps it
    ignored, and a chat streamed on and on after Ctrl-C or `kill -INT`. Only for `python -m lib_omost` itself
    (the main thread of its own process), never when `main()` is called inside another program."""
    if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except KeyboardInterrupt:
        print('error: interrupted', file=sys.stderr)
        return 130
    except Exception as e:  # noqa: BLE001 - the CLI promises one line, never a traceback
        from lib_omost.canvas import CanvasError
        message = str(e).splitlines()[0] if str(e) else type(e).__name__
        print(f'error: {message}', file=sys.stderr)
        return 2 if isinstance(e, CanvasError) else 1
