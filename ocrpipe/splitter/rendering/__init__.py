"""From an uploaded file to page images, in the splitter.

* what an input is, from its first bytes (PDF, PNG, JPEG, TIFF, WebP), and the reason code
  when it is none of them, is :mod:`ocrpipe.file_kinds`, in the contract: ``ocrpipe plan``
  counts pages by it too;
* :mod:`~ocrpipe.splitter.rendering.renderer`:
  :class:`~ocrpipe.splitter.rendering.renderer.Renderer`, the pool of render processes with a
  time and memory limit per page;
* :mod:`~ocrpipe.splitter.rendering.render_process`: what runs inside each render process;
* :mod:`~ocrpipe.splitter.rendering.page_decoders`: a PDF page or an image frame to an encoded page
  image at the model's size (PNG or JPEG), clamped and padded.
"""
