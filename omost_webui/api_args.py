"""Omost's script args in `POST /sdapi/v1/txt2img` and `img2img`: a list, or an object of named args.

Both hosts copy `alwayson_scripts[name]["args"]` into the job's script args before any script runs
(modules/api/api.py: Api.init_script_args, `script_args[args_from + idx] = ...["args"][idx]`): an object there is
a KeyError (HTTP 500, with a traceback in the console), a number a TypeError, and a string is spread into its
characters. So the extension looks at these two requests first: an object of named args becomes the list the host
expects, and any other shape is answered with HTTP 422 saying what is expected, one `[Omost]` console line, and
nothing queued.

`positional_args` and `rewrite_request` are the whole logic (no host, no web framework); `ArgsGate` is the ASGI
glue and `install` puts it in front of the hosts' two endpoints. The gate wraps each endpoint's own ASGI app (the
route's `app`), not the application's middleware stack: nothing else is touched, every other request goes on
exactly as before, and the hosts' middlewares (logging, CORS, compression) see our 422 like any other answer.
(Rebuilding the stack, as A1111's modules/initialize_util.py: setup_middleware does, would also switch on
Forge's GZip and CORS middlewares, which Forge adds after gradio has built its stack and so never runs.)
"""

from __future__ import annotations

import json

from omost_webui.generation import OmostInputError

ARG_NAMES = ('enabled', 'canvas', 'options', 'guidance')  # the script's args in order (scripts/omost.py: process)
EXPECTED = ('a list [enabled, canvas, options, guidance] (options and guidance optional) or an object with those '
            'names, e.g. {"enabled": true, "canvas": "..."}')
ROUTES = ('/sdapi/v1/txt2img', '/sdapi/v1/img2img')
SCRIPT_TITLE = 'omost'  # the hosts find an always-on script by its title, ignoring case (api.py: script_name_to_index)


def _json_kind(value) -> str:
    if value is None:
        return 'null'
    if isinstance(value, bool):
        return 'true' if value else 'false'
    if isinstance(value, (int, float)):
        return 'a number'
    if isinstance(value, str):
        return 'a string'
    return 'a list' if isinstance(value, list) else 'an object'


def positional_args(value) -> list:
    """The script args as the host copies them (a list) from what a client sent as Omost's `args`: a list as it
    is, an object of named args (`ARG_NAMES`; `enabled` required, the others as if left out of the list). Anything
    else: OmostInputError saying what is expected."""
    if isinstance(value, list):
        return value
    if not isinstance(value, dict):
        raise OmostInputError(f'Omost args must be {EXPECTED}; got {_json_kind(value)}')
    unknown = [str(name) for name in value if name not in ARG_NAMES]
    if unknown:
        raise OmostInputError(f'unknown Omost arg name(s) {", ".join(unknown)}; known: {", ".join(ARG_NAMES)}')
    if 'enabled' not in value:
        raise OmostInputError('Omost args by name need "enabled" (true or false), e.g. {"enabled": true, '
                              '"canvas": "..."}')
    last = max(ARG_NAMES.index(name) for name in value)
    return [value.get(name) for name in ARG_NAMES[:last + 1]]  # a gap (null) reads as the default


def rewrite_request(body: bytes) -> bytes | None:
    """The JSON body of a txt2img/img2img request with Omost's named args made positional; None when there is
    nothing to change (the request goes on byte for byte), also for a body that is not JSON (the host answers
    it). OmostInputError for Omost args (or an Omost entry) of another shape."""
    if b'alwayson_scripts' not in body:  # the common case, and big img2img bodies: not parsed twice
        return None
    try:
        request = json.loads(body)
    except (ValueError, RecursionError):
        return None
    scripts = request.get('alwayson_scripts') if isinstance(request, dict) else None
    if not isinstance(scripts, dict):
        return None
    changed = False
    for name, entry in scripts.items():
        if name.lower() != SCRIPT_TITLE:
            continue
        if not isinstance(entry, dict):  # the host would ignore a list here (Omost silently off) or fail
            raise OmostInputError(f'alwayson_scripts.{name} must be an object {{"args": ...}} with args {EXPECTED}; '
                                  f'got {_json_kind(entry)}')
        if 'args' in entry and not isinstance(entry['args'], list):
            entry['args'] = positional_args(entry['args'])
            changed = True
    return json.dumps(request).encode('utf-8') if changed else None


def refusal_body(error: Exception) -> bytes:
    """The 422 answer, shaped like the hosts' answer to our other refusals (api.py: handle_exception)."""
    message = str(error)
    return json.dumps({'error': type(error).__name__, 'detail': message, 'body': '', 'errors': message}).encode()


class ArgsGate:
    """ASGI app in front of one endpoint: reads the request body, rewrites or refuses it (`rewrite_request`), and
    replays it to the endpoint."""

    omost_args_gate = True  # `install` recognises a gate by this, also one made by an earlier copy of the module

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope.get('type') != 'http':
            return await self.app(scope, receive, send)
        messages = []
        while True:
            message = await receive()
            messages.append(message)
            if message.get('type') != 'http.request' or not message.get('more_body', False):
                break
        if messages[-1].get('type') == 'http.request':  # else the client left: replay what came, as it came
            try:
                body = rewrite_request(b''.join(m.get('body', b'') for m in messages))
            except OmostInputError as e:
                print(f'[Omost] {e}')
                answer = refusal_body(e)
                await send({'type': 'http.response.start', 'status': 422,
                            'headers': [(b'content-type', b'application/json'),
                                        (b'content-length', str(len(answer)).encode())]})
                await send({'type': 'http.response.body', 'body': answer})
                return
            if body is not None:
                headers = [(k, v) for k, v in scope.get('headers', []) if k.lower() != b'content-length']
                scope = dict(scope, headers=headers + [(b'content-length', str(len(body)).encode())])
                messages = [{'type': 'http.request', 'body': body, 'more_body': False}]

        async def replay():
            return messages.pop(0) if messages else await receive()

        await self.app(scope, replay, send)


def install(app) -> int:
    """Put a gate in front of the hosts' txt2img and img2img endpoints of `app` (there are none without --api);
    how many endpoints now have one. Idempotent."""
    count = 0
    for route in getattr(getattr(app, 'router', None), 'routes', None) or []:
        if getattr(route, 'path', None) not in ROUTES or 'POST' not in (getattr(route, 'methods', None) or ()):
            continue
        if not getattr(route.app, 'omost_args_gate', False):
            route.app = ArgsGate(route.app)
        count += 1
    return count


def on_app_started(demo, app):
    """`script_callbacks.on_app_started` callback: both hosts call it after adding their API routes (webui.py)."""
    install(app)
