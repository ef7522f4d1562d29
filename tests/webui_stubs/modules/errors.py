"""Like the WebUI's: report an exception to the console and carry on. Tests read `reported`."""
import traceback

reported = []


def report(message, exc_info=False):
    reported.append((message, traceback.format_exc() if exc_info else ''))
