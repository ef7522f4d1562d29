"""Command-line flags of the extension (parsed by the WebUI before anything else); defaults for its settings."""


def preload(parser):
    parser.add_argument('--omost-server-url', type=str, default=None,
                        help='Omost: default base URL of an OpenAI-compatible LLM server, e.g. http://127.0.0.1:8080/v1')
    parser.add_argument('--omost-model', type=str, default=None,
                        help='Omost: default model name on that server')
    parser.add_argument('--omost-api-key', type=str, default=None,
                        help='Omost: API key sent to the default LLM server only (or set OMOST_API_KEY)')
    parser.add_argument('--omost-models-dir', type=str, default=None,
                        help='Omost: folder of local Omost LLMs (default: <webui>/models/omost)')
