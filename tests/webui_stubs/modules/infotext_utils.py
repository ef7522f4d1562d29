"""Infotext quoting and parsing with the WebUI's documented rules."""
import json
import re

re_param = re.compile(r'\s*(\w[\w \-/]+):\s*("(?:\\.|[^\\"])+"|[^,]*)(?:,|$)')


def quote(text):
    if ',' not in str(text) and '\n' not in str(text) and ':' not in str(text):
        return text
    return json.dumps(text, ensure_ascii=False)


def unquote(text):
    if len(text) == 0 or text[0] != '"' or text[-1] != '"':
        return text
    try:
        return json.loads(text)
    except Exception:
        return text


def parse_generation_parameters(x: str) -> dict:
    *lines, lastline = x.strip().split('\n')
    if len(re_param.findall(lastline)) < 3:
        lines.append(lastline)
        lastline = ''
    res = {'Prompt': '\n'.join(line for line in lines if not line.startswith('Negative prompt:'))}
    for k, v in re_param.findall(lastline):
        res[k] = unquote(v) if v[:1] == '"' and v[-1:] == '"' else v
    return res
