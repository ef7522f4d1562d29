"""Extra-network tags are stripped from the prompts; the data comes from the first prompt only."""
import re

re_extra_net = re.compile(r'<(\w+):([^>]+)>')


def parse_prompt(prompt):
    found = []

    def strip(m):
        found.append((m.group(1), m.group(2)))
        return ''

    return re_extra_net.sub(strip, prompt), found


def parse_prompts(prompts):
    res, extra_data = [], None
    for prompt in prompts:
        text, data = parse_prompt(prompt)
        extra_data = data if extra_data is None else extra_data
        res.append(text)
    return res, extra_data
