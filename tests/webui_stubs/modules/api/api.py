"""The hosts' API where the extension meets it: the error answer, and the txt2img/img2img endpoints' handling of
`alwayson_scripts` (modules/api/api.py of A1111 1.10.1; Forge dfdcbab's is the same except where noted)."""
from secrets import compare_digest

from fastapi import Depends, FastAPI
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import HTTPException
from fastapi.responses import JSONResponse
from fastapi.security import HTTPBasic, HTTPBasicCredentials
from pydantic import BaseModel

from modules import errors


def handle_exception(e: Exception, method='POST', url='/sdapi/v1/txt2img'):
    """(status code, JSON body) the client gets. As api_middleware.handle_exception (lines 167-181): any
    exception becomes a JSON answer with the exception's `status_code` (else 500) and `detail`; one that is not a
    fastapi HTTPException is first reported to the console with its traceback (`errors.report(..., exc_info=True)`)."""
    err = {'error': type(e).__name__, 'detail': vars(e).get('detail', ''), 'body': vars(e).get('body', ''),
           'errors': str(e)}
    if not isinstance(e, HTTPException):  # the host's comment: "do not print backtrace on known httpexceptions"
        errors.report(f'API error: {method}: {url} {err}', exc_info=True)
    return vars(e).get('status_code', 500), err


def api_middleware(app: FastAPI):
    """A1111's api_middleware (lines 135-196) without its timing/logging middleware: every exception, raised in a
    route or a middleware, answered by handle_exception. Forge's Api.__init__ does not call it (line 210)."""
    def answer(request, e):
        status, err = handle_exception(e, request.method, request.url)
        return JSONResponse(status_code=status, content=jsonable_encoder(err))

    @app.middleware('http')
    async def exception_handling(request, call_next):
        try:
            return await call_next(request)
        except Exception as e:
            return answer(request, e)

    @app.exception_handler(Exception)
    async def fastapi_exception_handler(request, e):
        return answer(request, e)

    @app.exception_handler(HTTPException)
    async def http_exception_handler(request, e):
        return answer(request, e)


def forge_handle_exception(request, e: Exception):
    """Forge's webui.py: _handle_exception, the app's `exception_handlers={Exception: ...}` (HTTPExceptions keep
    FastAPI's own handler, which answers {"detail": ...})."""
    info = vars(e)
    content = {'error': type(e).__name__, 'detail': info.get('detail', ''), 'body': info.get('body', ''),
               'message': str(e)}
    return JSONResponse(status_code=int(info.get('status_code', 500)), content=jsonable_encoder(content))


def script_name_to_index(name, scripts):
    """Lines 36-40: a script by its title, ignoring case."""
    try:
        return [script.title().lower() for script in scripts].index(name.lower())
    except Exception as e:
        raise HTTPException(status_code=422, detail=f"Script '{name}' not found") from e


class Txt2ImgRequest(BaseModel):
    """The part of modules/api/models.py: StableDiffusionTxt2ImgProcessingAPI that matters here (line 109:
    `alwayson_scripts`, a dict defaulting to {})."""
    prompt: str = ''
    alwayson_scripts: dict = {}


class Img2ImgRequest(Txt2ImgRequest):
    init_images: list = []


class Api:
    """The endpoints as Api.__init__ adds them (lines 211-212, 221), each taking the script args as text2imgapi /
    img2imgapi do (init_script_args over the defaults) and handing them to `run(script_args)`, which stands for
    the job and returns the answer; with `--api-auth` (`shared.cmd_opts.api_auth`), every route behind the
    host's HTTP Basic check."""

    def __init__(self, app: FastAPI, script_runner, default_script_args, run, forge=False):
        from modules import shared
        if getattr(shared.cmd_opts, 'api_auth', None):  # lines 201-205
            self.credentials = {}
            for auth in shared.cmd_opts.api_auth.split(','):
                user, password = auth.split(':')
                self.credentials[user] = password
        self.app, self.script_runner, self.default_script_args, self.run = app, script_runner, default_script_args, run
        self.forge = forge
        if not forge:
            api_middleware(self.app)
        self.add_api_route('/sdapi/v1/txt2img', self.text2imgapi, methods=['POST'])
        self.add_api_route('/sdapi/v1/img2img', self.img2imgapi, methods=['POST'])
        self.add_api_route('/sdapi/v1/options', self.set_config, methods=['POST'])

    def add_api_route(self, path: str, endpoint, **kwargs):
        """Lines 274-277 (Forge: 276-279)."""
        from modules import shared
        if getattr(shared.cmd_opts, 'api_auth', None):
            return self.app.add_api_route(path, endpoint, dependencies=[Depends(self.auth)], **kwargs)
        return self.app.add_api_route(path, endpoint, **kwargs)

    def auth(self, credentials: HTTPBasicCredentials = Depends(HTTPBasic())):
        """Lines 279-284 (Forge: 281-286), verbatim."""
        if credentials.username in self.credentials:
            if compare_digest(credentials.password, self.credentials[credentials.username]):
                return True

        raise HTTPException(status_code=401, detail="Incorrect username or password",
                            headers={"WWW-Authenticate": "Basic"})

    def set_config(self, req: dict):
        """A1111: lines 678-686, `shared.opts.set(k, v, is_api=True)` for each; Forge: lines 686-688, its
        modules/sysinfo.py: set_config(req) (lines 218-250), which calls `shared.opts.set(k, v, is_api=False,
        run_callbacks=True)` for every option but the checkpoint and memory ones. Saving config.json is left out."""
        from modules import shared
        for k, v in req.items():
            if self.forge:
                if v == shared.opts.data.get(k):
                    continue
                shared.opts.set(k, v, is_api=False, run_callbacks=True)
            else:
                shared.opts.set(k, v, is_api=True)

    def text2imgapi(self, txt2imgreq: Txt2ImgRequest):
        return self.run(self.init_script_args(txt2imgreq, self.default_script_args, None, None, self.script_runner))

    def img2imgapi(self, img2imgreq: Img2ImgRequest):
        if img2imgreq.init_images is None:
            raise HTTPException(status_code=404, detail='Init image not found')
        return self.run(self.init_script_args(img2imgreq, self.default_script_args, None, None, self.script_runner))

    def get_script(self, script_name, script_runner):
        """Lines 308-313."""
        if script_name is None or script_name == '':
            return None, None
        script_idx = script_name_to_index(script_name, script_runner.scripts)
        return script_runner.scripts[script_idx]

    def init_script_args(self, request, default_script_args, selectable_scripts, selectable_idx, script_runner, *,
                         input_script_args=None):
        """Lines 335-365 (Forge: 337-367), verbatim but for the selectable script, which these tests never use."""
        script_args = default_script_args.copy()
        if input_script_args is not None:
            for index, value in input_script_args.items():
                script_args[index] = value
        if request.alwayson_scripts:
            for alwayson_script_name in request.alwayson_scripts.keys():
                alwayson_script = self.get_script(alwayson_script_name, script_runner)
                if alwayson_script is None:
                    raise HTTPException(status_code=422, detail=f'always on script {alwayson_script_name} not found')
                if alwayson_script.alwayson is False:
                    raise HTTPException(status_code=422,
                                        detail='Cannot have a selectable script in the always on scripts params')
                if 'args' in request.alwayson_scripts[alwayson_script_name]:
                    # min between arg length in scriptrunner and arg length in the request
                    for idx in range(0, min((alwayson_script.args_to - alwayson_script.args_from),
                                            len(request.alwayson_scripts[alwayson_script_name]['args']))):
                        script_args[alwayson_script.args_from + idx] = \
                            request.alwayson_scripts[alwayson_script_name]['args'][idx]
        return script_args
