// Check the samplesheet, the model configuration and the layer specification, and plan the work:
// layer groups x languages x sample shards. Runs in seconds on a CPU node.
// Contract: docs/architecture.md (layerwise-preflight).
process PREFLIGHT {
    tag "${model}"
    label 'process_single'

    container "${ workflow.containerEngine in ['singularity', 'apptainer'] && !task.ext.singularity_pull_docker_container ?
        'docker://ghcr.io/layerwise/layerwise:0.1.0' :
        'ghcr.io/layerwise/layerwise:0.1.0' }"

    input:
    path samplesheet, stageAs: 'input/*'   // staged apart so that it never collides with the outputs
    path prompts
    tuple val(model), val(revision)         // hub id or absolute local path; revision '' = none
    val spec                                // [layers:, languages:, layer_groups:, samples_per_task:]
    val source_digest                       // digest of layerwise/**.py: re-run on -resume when the code changes

    output:
    path 'plan.json'            , emit: plan
    path 'samplesheet.valid.csv', emit: samplesheet
    path 'versions.yml'         , emit: versions

    when:
    task.ext.when == null || task.ext.when

    script:
    def args = task.ext.args ?: ''
    def rev  = revision ? "--revision '${revision}'" : ''
    """
    layerwise-preflight \\
        --samplesheet ${samplesheet} \\
        --model '${model}' ${rev} \\
        --layers '${spec.layers}' \\
        --languages '${spec.languages}' \\
        --layer-groups '${spec.layer_groups}' \\
        --samples-per-task ${spec.samples_per_task} \\
        --prompts ${prompts} \\
        --out-dir . \\
        ${args}

    layerwise-versions '${task.process}' torch transformers > versions.yml
    """

    stub:
    // A plausible plan computed with the standard library only (no torch, no model download):
    // number of layers from a local model's config.json, else 34 (Gemma-3-4B). layer_groups: 'auto' -> one
    // group, N -> N contiguous groups, 'a-b,c-d' -> those ranges. The real rules live in layerwise/plan.py.
    def rev = revision ?: ''
    """
    python3 - '${samplesheet}' '${model}' '${spec.layers}' '${spec.languages}' '${spec.layer_groups}' '${spec.samples_per_task}' '${rev}' <<'END_STUB'
    import csv, json, os, re, sys
    sheet, model, layers, languages, groups, per_task, revision = sys.argv[1:8]
    n_layers, hidden = 34, 2560
    cfg = os.path.join(model, 'config.json')
    if os.path.isfile(cfg):
        c = json.load(open(cfg))
        t = c.get('text_config', c)
        n_layers, hidden = int(t.get('num_hidden_layers', 4)), int(t.get('hidden_size', 64))
    def spec(s):
        out = []
        for tok in re.split(r'[\\s,]+', s.strip()):
            if not tok:
                continue
            a, _, b = tok.partition('-')
            out += list(range(int(a), int(b or a) + 1))
        return sorted(set(out))
    sel = list(range(n_layers)) if layers.strip() == 'all' else spec(layers)
    if groups.strip() == 'auto':
        grp = [sel]
    elif groups.strip().isdigit():
        n = max(1, min(int(groups), len(sel)))
        k, r = divmod(len(sel), n)
        grp, i = [], 0
        for g in range(n):
            grp.append(sel[i:i + k + (1 if g < r else 0)])
            i += k + (1 if g < r else 0)
    else:
        grp = [[l for l in spec(part) if l in sel] for part in groups.split(',')]
        grp = [g for g in grp if g]
    with open(sheet, newline='') as fh:
        rows = list(csv.DictReader(fh))
    with open('samplesheet.valid.csv', 'w', newline='') as fh:
        w = csv.DictWriter(fh, fieldnames=['row'] + list(rows[0].keys()) if rows else ['row'])
        w.writeheader()
        for i, r in enumerate(rows):
            w.writerow(dict(row=i, **r))
    n, per = len(rows), int(per_task) or max(len(rows), 1)
    shards = [dict(index=i, rows='%d:%d' % (s, min(s + per, n))) for i, s in enumerate(range(0, max(n, 1), per))]
    langs = [l.strip() for l in languages.split(',') if l.strip()]
    units = [dict(layers=g, language=l, shard=s['index'], rows=s['rows']) for g in grp for l in langs for s in shards]
    plan = dict(model=dict(id=model, revision=revision or 'local', num_layers=n_layers, hidden_size=hidden,
                           model_type='gemma3'),
                layers=sel, languages=langs, shards=shards, layer_groups=grp, units=units, stub=True)
    json.dump(plan, open('plan.json', 'w'), indent=2)
    END_STUB

    cat <<-END_VERSIONS > versions.yml
    "${task.process}":
        python: "stub"
        torch: "stub"
        transformers: "stub"
        layerwise: "stub"
    END_VERSIONS
    """
}
