"""The API's error answer, as both hosts' modules/api/api.py: api_middleware.handle_exception (A1111 1.10.1 lines
167-181, the same in Forge dfdcbab): any exception becomes a JSON answer with the exception's `status_code` (else
500) and `detail`; one that is not a fastapi HTTPException is first reported to the console with its traceback
(`errors.report(message, exc_info=True)`)."""
from fastapi.exceptions import HTTPException

from modules import errors


def handle_exception(e: Exception):
    """(status code, JSON body) the client gets."""
    err = {'error': type(e).__name__, 'detail': vars(e).get('detail', ''), 'body': vars(e).get('body', ''),
           'errors': str(e)}
    if not isinstance(e, HTTPException):  # the host's comment: "do not print backtrace on known httpexceptions"
        errors.report(f'API error: POST: /sdapi/v1/txt2img {err}', exc_info=True)
    return vars(e).get('status_code', 500), err
