"""What API clients send to the host's endpoints, checked after the host has checked who sent it.

Script args (`POST /sdapi/v1/txt2img` and `img2img`): a list, or an object of named args. Both hosts copy
`alwayson_scripts[name]["args"]` into the job's script args before any script runs (modules/api/api.py:
Api.init_script_args, `script_args[args_from + idx] = ...["args"][idx]`): an object there is a KeyError (HTTP 500,
with a traceback in the console), a number a TypeError, and a string is spread into its characters. So an object
of named args becomes the list the host expects, and any other shape is answered with HTTP 422 (the host's own
answer to an HTTPException, as for the script's other refusals), one `[Omost]` console line, and nothing queued.

Settings (`POST /sdapi/v1/options`): the settings that make the server read, write or fetch something of the
caller's choosing (`settings.API_RESTRICTED`: paths and URLs) are dropped from the request, as A1111 does for
`restrict_api` options (modules/options.py: Options.set returns early `if is_api and option.restrict_api`); Forge's
options API ignores `restrict_api` (modules/sysinfo.py: set_config calls Options.set without is_api).

Both checks run inside the endpoint, as the host calls it: after the host's own `--api-auth` dependency
(api.py: Api.add_api_route adds `Depends(self.auth)` to every route) and its request validation. A client without
rights gets the host's 401 for whatever it sent, exactly as without the extension: it cannot learn that Omost is
installed, and nothing of ours reads its body. `install` wraps each endpoint's function (the route's
`dependant.call`, which FastAPI calls with the validated request after solving the route's dependencies,
fastapi/routing.py: run_endpoint_function); the app, its middlewares and every other route are untouched.
"""

from __future__ import annotations

import inspect

from omost_webui.generation import OmostInputError

ARG_NAMES = ('enabled', 'canvas', 'options', 'guidance')  # the script's args in order (scripts/omost.py: process)
EXPECTED = ('a list [enabled, canvas, options, guidance] (options and guidance optional) or an object with those '
            'names, e.g. {"enabled": true, "canvas": "..."}')
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


def rewrite_scripts(scripts) -> bool:
    """Make Omost's named args in a request's `alwayson_scripts` (a dict, changed in place) positional; whether
    anything changed. OmostInputError for Omost args (or an Omost entry) of another shape."""
    if not isinstance(scripts, dict):
        return False
    changed = False
    for name, entry in scripts.items():
        if not isinstance(name, str) or name.lower() != SCRIPT_TITLE:
            continue
        if not isinstance(entry, dict):  # the host would ignore a list here (Omost silently off) or fail
            raise OmostInputError(f'alwayson_scripts.{name} must be an object {{"args": ...}} with args {EXPECTED}; '
                                  f'got {_json_kind(entry)}')
        if 'args' in entry and not isinstance(entry['args'], list):
            entry['args'] = positional_args(entry['args'])
            changed = True
    return changed


def drop_restricted(request) -> list:
    """Remove the settings an API client may not change from an options request (a dict, changed in place); their
    names."""
    from omost_webui.settings import API_RESTRICTED
    if not isinstance(request, dict):
        return []
    dropped = [key for key in API_RESTRICTED if key in request]
    for key in dropped:
        del request[key]
    return dropped


def _script_args_check(values: dict):
    for value in values.values():
        try:
            rewrite_scripts(getattr(value, 'alwayson_scripts', None))
        except OmostInputError as e:
            print(f'[Omost] {e}')
            raise


def _options_check(values: dict):
    for value in values.values():
        dropped = drop_restricted(value)
        if dropped:
            print(f'[Omost] the options API cannot change {", ".join(dropped)} (Settings > Omost can); ignored')


CHECKS = {('/sdapi/v1/txt2img', 'POST'): _script_args_check, ('/sdapi/v1/img2img', 'POST'): _script_args_check,
          ('/sdapi/v1/options', 'POST'): _options_check}


def _checked(call, check):
    """`call` (the host's endpoint function) with `check(values)` first, as FastAPI calls it: with the validated
    request as keyword arguments, in its thread pool (or awaited, for a coroutine function)."""
    if inspect.iscoroutinefunction(call):
        async def endpoint(**values):
            check(values)
            return await call(**values)
    else:
        def endpoint(**values):
            check(values)
            return call(**values)
    endpoint.omost_checked = call  # `install` recognises a wrapped endpoint, also one of an earlier copy of us
    return endpoint


def install(app) -> int:
    """Put the checks into the hosts' endpoints of `app` (there are none without --api); how many endpoints now
    have them. Idempotent."""
    count = 0
    for route in getattr(getattr(app, 'router', None), 'routes', None) or []:
        dependant = getattr(route, 'dependant', None)
        methods = getattr(route, 'methods', None) or ()
        checks = [CHECKS[(route.path, m)] for m in methods if (getattr(route, 'path', None), m) in CHECKS]
        if not checks or dependant is None or getattr(dependant, 'call', None) is None:
            continue
        if not hasattr(dependant.call, 'omost_checked'):
            dependant.call = _checked(dependant.call, checks[0])
        count += 1
    return count


def on_app_started(demo, app):
    """`script_callbacks.on_app_started` callback: both hosts call it after adding their API routes (webui.py)."""
    install(app)
