// Omost chat input: Enter sends, Shift+Enter inserts a new line (gradio's own multi-line textbox does the
// opposite). Works by event delegation on the document, so it needs no knowledge of when gradio renders our
// elements, works for the txt2img and img2img instances alike, and does nothing on pages without them.
(function () {
    if (window.omostChatKeys) return;
    window.omostChatKeys = true;

    // The chat textarea the key event is for (composedPath: the real target even inside a shadow root).
    function chatInput(e) {
        var target = e.composedPath ? e.composedPath()[0] : e.target;
        if (!target || target.tagName !== 'TEXTAREA' || !target.closest) return null;
        return target.closest('.omost-chat-input');
    }

    // The Send button of the same Omost instance: the nearest ancestor of the input that holds one.
    function sendButton(box) {
        for (var node = box.parentElement; node; node = node.parentElement) {
            var button = node.querySelector('button.omost-send, .omost-send button, .omost-send');
            if (button) return button;
        }
        return null;
    }

    document.addEventListener('keydown', function (e) {
        if (e.key !== 'Enter' || e.shiftKey || e.isComposing || e.keyCode === 229) return;
        if (e.ctrlKey || e.altKey || e.metaKey) return;
        var box = chatInput(e);
        if (!box) return;
        e.preventDefault();  // no newline, and no keypress for gradio to act on
        e.stopPropagation();
        var button = sendButton(box);
        if (button && !button.disabled) button.click();
    }, true);

    // Shift+Enter: gradio submits multi-line textboxes on Shift+Enter in its keypress handler; keep that
    // handler from seeing the event so the browser's default (a new line) happens.
    document.addEventListener('keypress', function (e) {
        if (e.key === 'Enter' && e.shiftKey && chatInput(e)) e.stopPropagation();
    }, true);
})();
