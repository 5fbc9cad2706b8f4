"""What fusekit writes to disk, and the only code that knows file names and folder layouts.

atomic (writes that never leave half a file), checksums, task_vector (the τ file), run_folder (`fusekit train`'s
output), merged_folder (`fusekit merge`'s and `fusekit joint`'s output), checkpoint (resumable training state).
"""
