"""The private descriptor pool holding hotwire's ``inference`` protobuf package.

tritonclient registers its own ``inference.*`` messages in protobuf's default pool; keeping ours in a
separate pool lets both sets of stubs live in one process without duplicate-symbol errors.
"""

from google.protobuf import descriptor_pool

POOL = descriptor_pool.DescriptorPool()
