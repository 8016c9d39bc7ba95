/*
 * Start and end of a layerwise run: --help, parameter checks (before any task is submitted), the
 * parameter summary, the source digests for -resume; and the completion summary / e-mail.
 */

workflow PIPELINE_INITIALISATION {

    main:
    // Plain Groovy in functions below: Nextflow 24.10's workflow-body parser rejects some `def`
    // declarations whose initialiser names an implicit variable (params, LayerwiseUtils, ...).
    init = initialise()

    emit:
    samplesheet = Channel.value(init.samplesheet)   // path of the user's samplesheet
    prompts     = Channel.value(init.prompts)       // path of prompts.json
    model       = Channel.value(init.model)         // [hub id or absolute local path, revision or '']
    spec        = Channel.value(init.spec)          // [layers:, languages:, layer_groups:, samples_per_task:]
    digests     = Channel.value(init.digests)       // stage -> SHA-256 of the code it runs (layerwise/stages.json)
    outdir      = Channel.value(init.outdir)        // absolute --outdir (locked by this run)
    image_cache = Channel.value(init.image_cache)   // image-feature cache folder, '' = none
    execution_env = Channel.value(init.execution_env) // file the extraction jobs source: batch size, checkpoint interval
    sae_options = Channel.value(init.sae_options)   // JSON object of the SAE options ('' without --sae)
    intervention_options = Channel.value(init.intervention_options)   // JSON object ('' without --intervene)
}

/**
 * --help, parameter summary, parameter checks (all problems at once; the run stops before anything
 * is submitted), params_<timestamp>.json, and the values the workflow needs.
 */
def initialise() {
    def schema = new LayerwiseSchema(file("${projectDir}/nextflow_schema.json"))
    LayerwiseOutdir.init(projectDir)       // the outdir protocol's names (layerwise/core/outdir.json)
    def mono   = params.monochrome_logs as boolean
    def c      = LayerwiseSchema.colours(mono)
    def usage  = "nextflow run . -profile <test|local|slurm|ncc|venv|docker|apptainer|singularity>[,...] --input samples.csv --outdir results"

    if (params.help) {
        log.info header(c)
        log.info schema.help(params, usage, mono, params.help)
        exit 0
    }

    log.info header(c)
    // groups of stages that do not run are left out of the summary
    def skipped = (workflow.profile.tokenize(',').any { it in ['slurm', 'ncc'] } ? [] : ['cluster_options']) +
                  (params.sae ? [] : ['sae_options']) + (params.analysis ? [] : ['analysis_options'])
    log.info schema.summary(params, mono, skipped)

    def errors = []
    if (params.validate_params) {
        def result = schema.validate(params)
        result.warnings.each { log.warn it }
        errors += result.errors
    }
    errors += extraChecks(schema)
    if (errors) {
        def fixture = errors.any { it.contains('tests/fixtures/build') && it.contains('not found') } ?
            "\nThe test fixtures are missing: run scripts/setup.sh (builds .venv and tests/fixtures/build)." : ''
        error("ERROR: invalid parameters (see --help, or --help <parameter>):\n  * " + errors.join('\n  * ') + fixture)
    }

    // One run at a time per outdir (the lock first: a refused run writes nothing there); its metadata says
    // "incomplete" until PUBLISH_RESULTS has verified this run's result; published files damaged since the
    // last run send their unit back to work
    def ts = new java.util.Date().format('yyyy-MM-dd_HH-mm-ss')
    if (params.outdir) {
        def outdirPath = file(params.outdir.toString()).toAbsolutePath()
        def owner = LayerwiseOutdir.owner(workflow.sessionId.toString(), workflow.runName)
        def busy = LayerwiseOutdir.lock(outdirPath, owner)
        if (busy) error("ERROR: ${busy}")
        LayerwiseOutdir.prepare(outdirPath, workflow.runName).each { log.warn it }
        // the summaries this run writes again move aside now (until rewritten, their absence says "not complete");
        // copies identical to what the run published again (a cached stage) are dropped at the end
        def sae = LayerwiseOutdir.name('sae_dir')
        def rewritten = (params.sae ? ["${sae}/metrics.parquet", "${sae}/report.html", "${sae}/figures", saeRecord()] : []) +
                        (params.analysis ? [LayerwiseOutdir.name('analysis_dir')] : []) +
                        (params.intervene ? [LayerwiseOutdir.name('intervention_dir')] : [])
        rewritten = rewritten.collect { it.toString() }
        LayerwiseOutdir.supersede(outdirPath, rewritten, ts).each { log.info it }
        workflow.onComplete {
            try {
                LayerwiseOutdir.dropUnchanged(outdirPath, ts, rewritten)
            } finally {
                LayerwiseOutdir.unlock(outdirPath, owner)
            }
        }
    }

    // Parameters of this run, next to the execution reports
    try {
        file("${params.outdir}/pipeline_info").mkdirs()
        file("${params.outdir}/pipeline_info/params_${ts}.json").text = LayerwiseUtils.paramsJson(params)
    } catch (Exception e) {
        log.warn "Could not write params_${ts}.json to ${params.outdir}/pipeline_info: ${e.message}"
    }

    // A local model directory is passed to tasks by absolute path (tasks run in work/)
    def model = params.model.toString()
    if (LayerwiseUtils.looksLikePath(model) || file(model).exists()) model = file(model).toAbsolutePath().toString()

    def digests = LayerwiseUtils.stageDigests(projectDir)
    log.debug "layerwise source digests: ${digests}"

    return [
        samplesheet: file(params.input, checkIfExists: true),
        prompts    : file(params.prompts, checkIfExists: true),
        model      : [model, params.model_revision ? params.model_revision.toString() : ''],
        spec       : [
            layers          : params.layers.toString().trim(),
            languages       : params.languages.toString().split(',').collect { it.trim() }.findAll().join(','),
            layer_groups    : params.layer_groups.toString().trim(),
            samples_per_task: params.samples_per_task as int,
        ],
        digests    : digests,
        outdir     : file(params.outdir.toString()).toAbsolutePath().toString(),
        // a plain string: tasks hash it as text (a Path value would be hashed by its contents)
        image_cache: params.share_image_features ?
            (params.image_cache ?: "${workflow.workDir}/layerwise-image-features").toString() : '',
        execution_env: writeExecutionEnv(),
        sae_options: params.sae ? saeOptionsJson(schema) : '',
        intervention_options: params.intervene ? groupOptionsJson(schema, 'intervention_options', 'intervention_', ['intervene']) : '',
    ]
}

/**
 * The SAE options of this run as a JSON object: every sae_<option> param of the schema's sae_options
 * group (layerwise.sae.options.SAEOptions owns names, defaults and checks; PREFLIGHT checks them
 * against the model before any job is submitted). The language is set per TRAIN_SAE job.
 */
def saeOptionsJson(LayerwiseSchema schema) {
    def names = schema.groupParams('sae_options').findAll { it.startsWith('sae_') && it != 'sae_per_language' }
    def options = new TreeMap(names.collectEntries { [(it.substring(4)): params[it]] })
    return groovy.json.JsonOutput.toJson(options)
}

/**
 * The options of a stage as a JSON object: every <prefix><option> param of the schema group `group` (the stage's
 * options class owns names, defaults and checks; PREFLIGHT checks them against the model before any job).
 */
def groupOptionsJson(LayerwiseSchema schema, String group, String prefix, List<String> switches) {
    def names = schema.groupParams(group).findAll { it.startsWith(prefix) && !(it in switches) }
    def options = new TreeMap(names.collectEntries { [(it.substring(prefix.length())): params[it]] })
    return groovy.json.JsonOutput.toJson(options)
}

/**
 * Execution-only settings of the extraction jobs (they change how a job runs, never what it stores),
 * as a file the jobs source. Its path is a task input (a constant string), its content is not: changing
 * --batch_size after an out-of-memory error keeps every finished unit on -resume.
 */
def writeExecutionEnv() {
    def f = file("${workflow.workDir}/layerwise-execution.env")
    f.parent.mkdirs()
    f.text = "export LAYERWISE_BATCH_SIZE=${params.batch_size as int}\n" +
             "export LAYERWISE_CHECKPOINT_INTERVAL=${params.checkpoint_interval as int}\n"
    return f.toString()
}

workflow PIPELINE_COMPLETION {

    take:
    ch_plan        // parsed plan.json (value channel); never arrives if PREFLIGHT fails

    main:
    registerCompletion(ch_plan)
}

/**
 * Completion summary on the console (status, duration, outdir, layer files, resume hint) and
 * the optional e-mail.
 */
def registerCompletion(ch_plan) {
    // Inside the handler closure `params` and `workflow` do not resolve: capture the settings now
    // and do the work in a function (functions see the script binding).
    def settings = [
        mono     : params.monochrome_logs as boolean,
        outdir   : params.outdir.toString(),
        email    : params.email,
        emailFail: params.email_on_fail,
        plaintext: params.plaintext_email as boolean,
        expected : null,
        sae      : params.sae as boolean,
        analysis : params.analysis as boolean,
    ]
    ch_plan.subscribe { plan -> settings.expected = (plan.layers as List).size() * (plan.languages as List).size() }
    workflow.onComplete { completionSummary(settings) }
}

def completionSummary(Map settings) {
    def c = LayerwiseSchema.colours(settings.mono)
    def outdir = settings.outdir
    def found = LayerwiseUtils.verifiedLayerFiles(file(outdir).toAbsolutePath())
    def status = workflow.success ? "${c.green}completed successfully${c.reset}" : "${c.red}FAILED${c.reset}"
    def lines = [
        "layerwise ${workflow.manifest.version} ${status}${workflow.stubRun ? ' (stub run)' : ''}",
        "  run name   : ${workflow.runName}",
        "  duration   : ${workflow.duration}",
        "  outdir     : ${outdir}",
        "  layer files: ${found.files}" + (settings.expected != null ? " of ${settings.expected}" : '') +
            " verified in ${outdir}/layer_checkpoints" + (found.status in ['passed', 'stub'] ? '' : " (extraction_metadata.json: ${found.status})"),
        "  reports    : ${outdir}/pipeline_info/",
    ]
    // the later stages' outputs, as their completion markers say (written last by each stage)
    if (settings.sae)
        lines << "  SAEs       : " + (file("${outdir}/sae/metrics.parquet").exists() ? "${outdir}/sae/ (metrics.parquet, report.html)" : 'not complete')
    if (settings.analysis)
        lines << "  analysis   : " + (file("${outdir}/analysis/report.html").exists() ? "${outdir}/analysis/report.html" : 'not complete')
    if (workflow.success && workflow.stats.ignoredCount)
        lines << "  ${c.yellow}${workflow.stats.ignoredCount} task(s) failed and were ignored${c.reset}"
    if (!workflow.success) {
        lines << "  error      : ${LayerwiseUtils.errorLine(workflow.errorMessage) ?: workflow.exitStatus}"
        lines << "  Fix the cause, then resume (finished tasks are reused):"
        lines << "    ${LayerwiseUtils.resumeCommand(workflow.commandLine)}"
    }
    def text = lines.join('\n')
    log.info "-${c.dim}----------------------------------------------------${c.reset}-\n${text}"

    def to = settings.email ?: (!workflow.success ? settings.emailFail : null)
    if (!to) return
    def plain = text.replaceAll(/\033\[[0-9;]*m/, '')
    def subject = "[layerwise] ${workflow.success ? 'Successful' : 'FAILED'}: ${workflow.runName}"
    def body = plain + "\n\n  command    : ${workflow.commandLine}\n  launch dir : ${workflow.launchDir}\n  work dir   : ${workflow.workDir}\n"
    try {
        if (settings.plaintext) {
            sendMail(to: to, subject: subject, text: body)
        } else {
            sendMail(to: to, subject: subject, body: "<html><body><pre>${body.replace('&', '&amp;').replace('<', '&lt;')}</pre></body></html>")
        }
        log.info "Sent the summary e-mail to ${to}"
    } catch (Exception e) {
        log.warn "Could not send the summary e-mail to ${to}: ${e.message} (configure the `mail` scope or a local sendmail)"
    }
}

// -------------------------------------------------------------------------------------------------

def header(Map c) {
    """
    -${c.dim}----------------------------------------------------${c.reset}-
    ${c.bold}layerwise${c.reset} v${workflow.manifest.version}  ${c.dim}(Nextflow ${nextflow.version})${c.reset}
      per-layer activations of ${params.model}
    -${c.dim}----------------------------------------------------${c.reset}-
      run name : ${workflow.runName}
      profile  : ${workflow.profile}
      launchDir: ${workflow.launchDir}
      workDir  : ${workflow.workDir}
      software : ${workflow.containerEngine ? "${workflow.containerEngine} container" : "venv / host environment"}
    """.stripIndent()
}

/** <outdir>-relative path of the SAE stage's record (what says an earlier run's SAEs are complete). */
def saeRecord() {
    "${LayerwiseOutdir.name('sae_dir')}/${LayerwiseOutdir.name('stage_record')}".toString()
}

/** Checks that the schema cannot express. Each entry is one line naming the parameter. */
def extraChecks(LayerwiseSchema schema) {
    // the user's inputs, cheap checks (languages and prompts, samplesheet columns, layers against the model's depth)
    def errors = LayerwiseInputs.check(params, projectDir)
    // The intervention ablates latents of the run's SAEs (trained and published first)
    // The intervention ablates SAE latents: this run's (--sae), or those an earlier run published in --outdir
    // (used only if they were trained on this run's layer files: PUBLISH_RESULTS checks their record)
    if (params.intervene && !params.sae && params.outdir && !file("${params.outdir}/${saeRecord()}").exists())
        errors << "--intervene needs SAEs: add --sae, or use an --outdir where an earlier run published them " +
                  "(${params.outdir}/${saeRecord()} not found; docs/intervention.md)"
    // A model given as a path must exist (hub ids like google/gemma-3-4b-it are resolved by the task)
    if (params.model instanceof CharSequence && params.model) {
        def m = params.model.toString()
        if (LayerwiseUtils.looksLikePath(m) && !file(m).exists())
            errors << "--model: directory not found: ${m}"
        else if (file(m).exists() && !file(m).isDirectory())
            errors << "--model: expected a model directory (with config.json) but found a file: ${m}"
    }
    // Memory/time of GPU jobs above the caps would be silently lowered by resourceLimits
    if (workflow.profile.tokenize(',').any { it in ['slurm', 'ncc'] }) try {
        if (params.gpu_memory && params.max_memory &&
            new nextflow.util.MemoryUnit(params.gpu_memory.toString()) > new nextflow.util.MemoryUnit(params.max_memory.toString()))
            log.warn "--gpu_memory ${params.gpu_memory} is above --max_memory ${params.max_memory}: jobs get ${params.max_memory}"
    } catch (Exception ignored) { /* malformed values are reported by the schema check */ }
    // venv mode (profiles test, ncc, venv without a container engine): the venv must exist
    def profiles = workflow.profile.tokenize(',')
    if (!workflow.containerEngine && profiles.any { it in ['test', 'local', 'slurm', 'ncc', 'venv'] } && params.venv) {
        if (!file("${params.venv}/bin/activate").exists()) {
            def msg = "--venv: no Python virtual environment at ${params.venv} (create it with scripts/setup.sh, pass --venv /path/to/venv, or use a container profile)"
            if ('test' in profiles) errors << msg else log.warn msg
        }
    }
    return errors
}
